"""An append-only spool of inbound replies the ledger could not take (locked, down): never lost, applied later.

One JSON object per line, each appended with ``O_APPEND`` and ``fsync``'d before the
web app answers the provider. Applying removes the applied lines by rewriting the file
(write, ``fsync``, rename) under ``<spool>.lock``, which appends take too, so a reply
appended meanwhile is kept. Applying is idempotent: the ledger keeps a message id once.
A line that cannot be read (a torn write by a crash) is left in place for a person.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from dispatcher.errors import LedgerError

try:
    import fcntl
except ImportError:  # not POSIX: one process per spool (the thread lock still holds)
    HAVE_FLOCK = False
else:
    HAVE_FLOCK = True

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".inbound-spool.jsonl"
"""Appended to a SQLite ledger's path: its spool; other ledgers spool to ``<outbox dir>/inbound-spool.jsonl``."""

Entry = dict[str, Any]


def spool_path(database_url: str, outbox_dir: Path) -> Path:
    """Next to a SQLite ledger file, else in the outbox directory."""
    if database_url.startswith("sqlite"):
        database = make_url(database_url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            return Path(database + SPOOL_SUFFIX)
    return outbox_dir / SPOOL_SUFFIX.lstrip(".")


class Spool:
    """The spool file at ``path``; safe to use from several threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._refusing = False  # the last try to apply an entry was refused by the ledger

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if HAVE_FLOCK:
                    fcntl.flock(descriptor, fcntl.LOCK_EX)
                yield
            finally:
                os.close(descriptor)

    def append(self, entry: Entry) -> None:
        """Add ``entry`` durably (on disk when this returns); raises :class:`LedgerError`."""
        line = (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode()
        try:
            with self._exclusive():
                created = not self.path.exists()
                descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(descriptor, line)
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                if created:
                    _fsync_directory(self.path.parent)
        except OSError as exc:
            raise LedgerError(f"spool {self.path}: cannot append: {exc}") from exc

    def entries(self) -> list[Entry]:
        """The entries waiting, oldest first (unreadable lines left out)."""
        return [entry for _, entry in self._lines() if entry is not None]

    def _lines(self) -> list[tuple[str, Entry | None]]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [(line, _decode(line)) for line in text.splitlines() if line.strip()]

    def drain(self, apply: Callable[[Entry], None]) -> int:
        """Apply the waiting entries in order, stopping at the first :class:`LedgerError`; how many were applied."""
        if not self.path.exists():
            return 0
        done: set[str] = set()
        for entry in self.entries():
            try:
                apply(entry)
            except LedgerError as exc:  # said once per outage: the web app tries every second
                log.log(logging.DEBUG if self._refusing else logging.WARNING,
                        "inbound spool: the ledger still refuses (%s); will try again", exc)
                self._refusing = True
                break
            self._refusing = False
            done.add(_key(entry))
        if done:
            self._forget(done)
        return len(done)

    def _forget(self, done: set[str]) -> None:
        """Rewrite the spool without the applied entries (kept: those appended meanwhile, unreadable lines)."""
        with self._exclusive():
            kept = [line for line, entry in self._lines() if entry is None or _key(entry) not in done]
            if not kept:
                self.path.unlink(missing_ok=True)
                return
            temporary = self.path.with_name(self.path.name + ".tmp")
            with open(temporary, "w", encoding="utf-8") as out:
                out.write("".join(line + "\n" for line in kept))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
            _fsync_directory(self.path.parent)


def _decode(line: str) -> Entry | None:
    try:
        entry = json.loads(line)
    except ValueError:
        log.error("inbound spool: an unreadable line is kept for a person to read")
        return None
    return entry if isinstance(entry, dict) and "message_sid" in entry else None


def _key(entry: Entry) -> str:
    return str(entry["message_sid"])


def _fsync_directory(directory: Path) -> None:
    """Make a created or renamed file's directory entry durable (where the platform allows it)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
