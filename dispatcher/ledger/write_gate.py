"""One writer at a time on a SQLite ledger, handed on as soon as the last one commits.

SQLite lets one connection write at a time. A connection that finds the write lock held
is put to sleep by SQLite's busy handler for 1, 2, 5, 10, 15, 20 … ms and tries again,
however soon the lock is let go: the threads of one process and the processes of one run
lose whole milliseconds on every collision. The gate queues the writers instead: a thread lock in a
process, an ``flock`` on ``<database file>.write.lock`` between processes, taken by a
connection before its first write statement and let go when its transaction ends (commit,
rollback, close), as SQLite's own write lock is. A thread waiting for another of its process wakes
at once; a process waiting for another tries the file lock again every 0.1 to 1 ms.

The gate only orders writers: SQLite's lock and busy timeout still decide. A writer that
waited the whole lock timeout for the gate goes on without it, and SQLite reports the
lock (``database is locked``) as it would have; statements the gate does not recognise as
writes (DDL, ``PRAGMA``) wait in SQLite's busy handler as before.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: the gate orders the threads of a process only
    fcntl = None  # type: ignore[assignment]

LOCK_FILE_SUFFIX = ".write.lock"
"""Appended to a SQLite database's path: the file a process locks while one of its connections writes."""

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_LOCKING_BEGINS = ("BEGIN IMMEDIATE", "BEGIN EXCLUSIVE")

_POLL_FIRST, _POLL_MOST = 0.0001, 0.001
"""Seconds between two tries for another process's gate: doubling from the first to the most."""


def _writes(sql: str) -> bool:
    head = sql.lstrip()[:15].upper()
    return head.startswith(_WRITES) or head.startswith(_LOCKING_BEGINS)


class WriteGate:
    """The writers of one SQLite database file in this process, and this process among the others."""

    def __init__(self, path: str | None, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._pid = -1
        self._lock = threading.Lock()
        self._descriptor: int | None = None

    def enter(self) -> bool:
        """Wait for the gate (at most the lock timeout); whether it was had."""
        self._after_fork()
        if not self._lock.acquire(timeout=self.timeout):
            return False
        if self._descriptor is None or self._file_locked():
            return True
        self._lock.release()
        return False

    def leave(self) -> None:
        if self._descriptor is not None and fcntl is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        self._lock.release()

    def _file_locked(self) -> bool:
        """The other processes' side of the gate: polled (an ``flock`` wait cannot time out), soon at first."""
        assert self._descriptor is not None and fcntl is not None
        deadline, pause = time.monotonic() + self.timeout, _POLL_FIRST
        while True:
            try:
                fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, _POLL_MOST)
            except OSError:  # a file system without locks: the threads of this process are ordered still
                return True

    def _after_fork(self) -> None:
        """A forked process (a Celery worker's pool) starts with a gate of its own: neither the parent's thread
        lock, which another thread may have held at the fork, nor its open file (a lock on it is the parent's)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._descriptor = None
        if self.path is not None and fcntl is not None:
            try:
                self._descriptor = os.open(self.path + LOCK_FILE_SUFFIX, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:  # a read-only directory: SQLite alone orders the writers
                self._descriptor = None


class _GatedCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> _GatedCursor:
        connection = _before(self, sql)
        try:
            return super().execute(sql, parameters)
        finally:
            connection.after_statement()

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> _GatedCursor:
        connection = _before(self, sql)
        try:
            return super().executemany(sql, seq_of_parameters)
        finally:
            connection.after_statement()


def _before(cursor: sqlite3.Cursor, sql: str) -> _GatedConnection:
    """The cursor's connection, holding the gate when ``sql`` writes."""
    connection: _GatedConnection = cursor.connection  # type: ignore[assignment]
    if not connection.holding and _writes(sql):
        connection.holding = connection.gate.enter()
    return connection


class _GatedConnection(sqlite3.Connection):
    gate: WriteGate
    holding = False

    def cursor(self, factory: Any = _GatedCursor) -> Any:
        return super().cursor(factory)

    def after_statement(self) -> None:
        """A write outside a transaction (autocommit) is done: the gate goes with it."""
        if self.holding and not self.in_transaction:
            self.drop_gate()

    def drop_gate(self) -> None:
        self.holding = False
        self.gate.leave()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._settle()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._settle()

    def _settle(self) -> None:
        """Let the gate go once no transaction is open (a commit that failed may leave it open)."""
        try:
            open_ = self.in_transaction
        except sqlite3.ProgrammingError:  # closed
            open_ = False
        if self.holding and not open_:
            self.drop_gate()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.holding:
                self.drop_gate()


def gated_connection_class(path: str | None, timeout: float) -> type[sqlite3.Connection]:
    """A :class:`sqlite3.Connection` class (``sqlite3.connect(factory=…)``) whose writers pass one gate."""
    return type("GatedConnection", (_GatedConnection,), {"gate": WriteGate(path, timeout)})
