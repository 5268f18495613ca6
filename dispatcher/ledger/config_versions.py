"""A copy of every configuration version the daemon loaded, so an edit can be compared with what runs.

A version (:func:`~dispatcher.schedule.loader.content_version`) names the schedule
file's bytes and its template snapshot; the row keeps both, so the version can be
planned again later without today's ``templates/`` directory. Recording is an
upsert (``INSERT … ON CONFLICT DO UPDATE``, the same statement on PostgreSQL and
SQLite): loading a version twice, or two daemons recording it at once, leaves one
row whose ``last_loaded_at`` moved. The running version is the one loaded last.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from sqlalchemy import Engine, Select, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.compose.layout import TemplateSet
from dispatcher.errors import ConfigError, LedgerError
from dispatcher.ledger.tables import config_versions
from dispatcher.schedule.loader import TEMPLATES_DIRNAME, LoadedSchedule, load_schedule

log = logging.getLogger(__name__)

TICK = timedelta(microseconds=1)
"""How far a load is stamped after the latest one when the clock has not moved past it (a coarse or fixed clock)."""


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One configuration version as the ledger keeps it: the schedule's text and ``{template name: source}``."""

    version: str
    schedule_text: str
    templates: Mapping[str, str]
    path: str | None
    first_loaded_at: datetime
    last_loaded_at: datetime

    def content(self) -> bytes:
        """The schedule file's bytes, as hashed into the version."""
        return self.schedule_text.encode("utf-8")

    def template_set(self, root: Path) -> TemplateSet:
        """The template snapshot, byte for byte as it was read (``root`` only names where it would live)."""
        files = {name: source.encode("utf-8", "surrogateescape") for name, source in sorted(self.templates.items())}
        return TemplateSet(root, MappingProxyType(files))


def snapshot_of(loaded: LoadedSchedule) -> tuple[str, str] | None:
    """``(schedule text, templates JSON)`` of ``loaded`` as it was read, or None when the file is not UTF-8 text.

    The bytes are those the version was hashed from, kept by :class:`LoadedSchedule`: a file saved again since the
    load (the watcher reloads it next) does not keep the version it replaced from being stored.
    """
    try:
        text = loaded.content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text, _templates_json(loaded.templates)


def _templates_json(templates: TemplateSet) -> str:
    """``{name: source}``; a file that is not UTF-8 keeps its bytes as escaped surrogates (then ASCII JSON)."""
    sources = {name: data.decode("utf-8", "surrogateescape") for name, data in templates.files.items()}
    text = json.dumps(sources, ensure_ascii=False, sort_keys=True)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(sources, ensure_ascii=True, sort_keys=True)
    return text


def record_loaded(engine: Engine, loaded: LoadedSchedule, now: datetime) -> bool:
    """Keep a copy of ``loaded`` (insert it, or move its ``last_loaded_at``); False when it is not UTF-8 text.

    Raises :class:`LedgerError` when the ledger cannot be written.
    """
    snapshot = snapshot_of(loaded)
    if snapshot is None:
        log.warning("configuration version %s not recorded: %s is not UTF-8 text", loaded.version, loaded.path)
        return False
    record(engine, loaded.version, *snapshot, str(loaded.path), now)
    return True


def ensure_recorded(engine: Engine, loaded: LoadedSchedule, now: datetime) -> bool:
    """Keep a copy of ``loaded`` unless the ledger has one: what Celery workers run a task's version from.

    Unlike :func:`record_loaded` it leaves a version already stored as it is (a run or a retry does not make
    it the running version again). False when the file is not UTF-8 text (nothing is stored); raises
    :class:`LedgerError` when the ledger cannot be read or written.
    """
    if fetch(engine, loaded.version) is not None:
        return True
    return record_loaded(engine, loaded, now)


def record(engine: Engine, version: str, schedule_text: str, templates_json: str, path: str | None,
           now: datetime) -> None:
    """Insert ``version`` or, when it is there, stamp it loaded again: idempotent, and safe when run concurrently.

    The stamp is never at or before the latest one recorded, so the last load stays the running version even
    when the clock did not move between two loads.
    """
    try:
        with engine.begin() as connection:
            latest = connection.execute(select(func.max(config_versions.c.last_loaded_at))).scalar_one_or_none()
            stamp = now if latest is None or now > latest else latest + TICK
            dialect = sqlite if connection.dialect.name == "sqlite" else postgresql
            insert = dialect.insert(config_versions).values(
                version=version, schedule_text=schedule_text, templates=templates_json, path=path,
                first_loaded_at=stamp, last_loaded_at=stamp)
            connection.execute(insert.on_conflict_do_update(
                index_elements=[config_versions.c.version],
                set_={"last_loaded_at": insert.excluded.last_loaded_at, "path": insert.excluded.path}))
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot record configuration version {version}: {exc}") from exc


def fetch(engine: Engine, version: str) -> StoredVersion | None:
    """The stored copy of ``version``, or None; raises :class:`LedgerError` when the ledger cannot be read."""
    return _one(engine, select(config_versions).where(config_versions.c.version == version), f"version {version}")


def running(engine: Engine) -> StoredVersion | None:
    """The version the daemon loaded last, or None when none was recorded."""
    query = select(config_versions).order_by(config_versions.c.last_loaded_at.desc(),
                                             config_versions.c.version).limit(1)
    return _one(engine, query, "the running version")


def _one(engine: Engine, query: Select[Any], what: str) -> StoredVersion | None:
    try:
        with engine.connect() as connection:
            row = connection.execute(query).mappings().first()
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot read {what} of the configuration (dispatcher db upgrade?): "
                          f"{exc}") from exc
    if row is None:
        return None
    return StoredVersion(row["version"], row["schedule_text"], json.loads(row["templates"]), row["path"],
                         row["first_loaded_at"], row["last_loaded_at"])


def load_stored(stored: StoredVersion, env: Mapping[str, str]) -> LoadedSchedule:
    """The stored version, loaded and validated again from its own copy (never from today's files).

    The loader reads files, so the copy is written to a temporary directory first; the result's path is the
    one the version was loaded from. Raises :class:`ConfigError` (its problems name the version) when it no
    longer validates, e.g. a ``${VAR}`` it needs is unset, and :class:`LedgerError` when the copy is damaged.
    """
    with tempfile.TemporaryDirectory(prefix="dispatcher-version-") as directory:
        root = Path(directory)
        schedule_file = root / "schedules.yaml"
        schedule_file.write_bytes(stored.content())
        for name, data in stored.template_set(root).files.items():
            target = root / TEMPLATES_DIRNAME / _safe(name, stored.version)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        try:
            loaded = load_schedule(schedule_file, env)
        except ConfigError as exc:
            label = f"{stored.path or 'schedules.yaml'} (version {stored.version})"
            raise ConfigError([replace(p, file=label) if p.file == str(schedule_file) else p
                               for p in exc.problems]) from None
    if loaded.version != stored.version:
        raise LedgerError(f"ledger: the stored copy of configuration version {stored.version} is damaged "
                          f"(it hashes to {loaded.version})")
    return replace(loaded, path=Path(stored.path) if stored.path else loaded.path)


def _safe(name: str, version: str) -> str:
    """A template name as a relative path that stays inside the templates directory."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or any(part in ("..", ".", "") for part in parts):
        raise LedgerError(f"ledger: configuration version {version} holds a bad template name {name!r}")
    return name
