"""``dispatcher validate``'s look at the source: the query's columns against the account contract.

The query runs wrapped with ``LIMIT 0`` (no row is fetched, see
:mod:`dispatcher.pipeline.source_contract`); each finding is a problem at the position of
``source.query`` in schedules.yaml, as is a query the database refuses. A source
that cannot be reached (or a demo table not seeded yet) is a one-line note, not a
problem: the rest of the file is still checked and can be valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from dispatcher.errors import Problem
from dispatcher.masking import mask_url
from dispatcher.pipeline.source_contract import SourceColumn, contract_findings, describe
from dispatcher.schedule.loader import LoadedSchedule
from dispatcher.schedule.models import DEFAULT_SOURCE_QUERY
from dispatcher.schedule.positions import Position, value_position
from dispatcher.settings import DEFAULT_DATABASE_URL

CONNECT_TIMEOUT = 5
"""Seconds ``validate`` waits for the source database to accept a connection (PostgreSQL, MySQL)."""


@dataclass(frozen=True, slots=True)
class SourceCheck:
    """Problems of the source query, and a note when it could not be checked."""

    problems: list[Problem] = field(default_factory=list)
    note: str | None = None


class _NotChecked(Exception):
    """The source cannot be looked at (unreachable, demo table missing): the note to print."""


def check_source(loaded: LoadedSchedule, env: Mapping[str, str]) -> SourceCheck:
    """Run ``loaded``'s source query without fetching a row and check its columns against the contract."""
    source = loaded.schedule.source
    url = source.url or env.get("DISPATCHER_DATABASE_URL") or DEFAULT_DATABASE_URL
    file = str(loaded.path)
    where = _query_position(loaded.path)
    try:
        columns = _columns(url, source.query, demo=source.url is None and source.query == DEFAULT_SOURCE_QUERY)
    except _NotChecked as note:
        return SourceCheck(note=f"{file}: source.query not checked: {note}")
    except SQLAlchemyError as exc:
        return SourceCheck([Problem(file, *where, f"source.query: the database refuses it: {_reason(exc)}",
                                    rule="source")])
    findings = contract_findings(columns)
    return SourceCheck([Problem(file, *where, f"source.query: {finding}", rule="source") for finding in findings])


def _columns(url: str, query: str, *, demo: bool) -> list[SourceColumn]:
    engine = _engine(url)
    try:
        try:
            connection = engine.connect()
        except SQLAlchemyError as exc:
            raise _NotChecked(f"cannot connect to {mask_url(url)}: {_reason(exc)}") from None
        with connection:
            try:
                return describe(connection, query)
            except SQLAlchemyError as exc:
                if demo:
                    raise _NotChecked(f"the demo table cannot be read ({_reason(exc)}); "
                                      "dispatcher seed-demo fills it") from None
                raise
    finally:
        engine.dispose()


def _engine(url: str) -> Engine:
    """An engine that gives up connecting after :data:`CONNECT_TIMEOUT`; never creates a SQLite file."""
    try:
        parsed = make_url(url)
        backend, database = parsed.get_backend_name(), parsed.database
        if backend == "sqlite" and database not in (None, "", ":memory:") and not Path(str(database)).exists():
            raise _NotChecked(f"the database file {database} does not exist")
        timeout = {"connect_timeout": CONNECT_TIMEOUT} if backend in ("postgresql", "mysql") else {}
        return create_engine(parsed, connect_args=timeout, hide_parameters=True)
    except (SQLAlchemyError, ValueError) as exc:
        raise _NotChecked(f"cannot use the source URL {mask_url(url)}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """The driver's own message, first line only."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return lines[0].strip() if lines else type(cause).__name__


def _query_position(path: Path) -> Position:
    """Where ``source.query`` is written (the ``source`` mapping, or the file's start, without one)."""
    try:
        root = YAML(typ="rt").load(path.read_bytes())
    except (OSError, YAMLError):
        return 1, 1
    return value_position(root, ("source", "query"))
