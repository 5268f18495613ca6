"""Opening the ledger database and bringing its schema up to date.

Migrations run under a lock held for the whole migration, so processes starting
at once on a new database migrate it one after the other; each one that comes
after the first finds it at head and does nothing. PostgreSQL: a transaction
advisory lock (:data:`MIGRATION_LOCK_KEY`) taken in the migration's own
transaction. SQLite: ``flock`` on ``<database file>.migrate.lock``; where there is
no file (``:memory:``, ``file:`` URIs) or no ``fcntl`` (not POSIX), the migration
runs in a ``BEGIN EXCLUSIVE`` transaction instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from dispatcher.errors import ConfigError, LedgerError
from dispatcher.ledger.write_gate import gated_connection_class
from dispatcher.masking import mask_url

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # not POSIX: SQLite migrations fall back to BEGIN EXCLUSIVE
    HAVE_FLOCK = False
else:
    HAVE_FLOCK = True

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

MIGRATION_LOCK_KEY = 0x6469737061746368
"""PostgreSQL advisory lock key held while migrating ("dispatch" in ASCII); one per database, not per schema."""

LOCK_FILE_SUFFIX = ".migrate.lock"
"""Appended to a SQLite database's path: the file locked while migrating it (created, never removed)."""


DEFAULT_LOCK_TIMEOUT = 30.0
"""Seconds a ledger write waits for a lock another connection holds (SQLite busy timeout)."""


def _sqlite_pragmas(lock_timeout: float) -> Any:
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # first: switching a new database to WAL waits for a lock too (another process migrating it holds one)
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # a statement that writes many rows inside a transaction (a booking's multi-row INSERTs, a group commit's
        # claims) keeps the pages it changes in a statement journal, to undo itself alone; past 64 KiB SQLite
        # spilled it to a file under /var/tmp: 95,000 writes in a 20,000-account run. In memory it is at most
        # the pages one statement changes (a booking's: a few MB); the ledger makes no temporary tables
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    return pragmas


def create_ledger_engine(url: str, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> Engine:
    """An engine for ``url``; SQLite gets WAL, NORMAL sync, a busy timeout of ``lock_timeout`` seconds and the
    write gate (:mod:`dispatcher.ledger.write_gate`).

    On PostgreSQL ``lock_timeout`` bounds waiting for a row or table lock and for a connection.
    Raises :class:`ConfigError` when ``url`` is not a database URL that can be opened here.
    """
    check_url(url)
    if url.startswith("sqlite"):
        gated = gated_connection_class(_sqlite_file(make_url(url)), lock_timeout)
        engine = create_engine(url, connect_args={"timeout": lock_timeout, "factory": gated}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas(lock_timeout))
        return engine
    if lock_timeout == DEFAULT_LOCK_TIMEOUT or not url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, hide_parameters=True)
    given = make_url(url).query.get("options", ())
    options = " ".join([given] if isinstance(given, str) else given)  # keep the URL's own (search_path ...)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=lock_timeout,
                         hide_parameters=True,
                         connect_args={"connect_timeout": max(1, round(lock_timeout)),
                                       "options": f"{options} -c lock_timeout={int(lock_timeout * 1000)}".strip()})


def check_url(url: str, variable: str = "DISPATCHER_DATABASE_URL") -> None:
    """Raise :class:`ConfigError` naming ``variable`` unless ``url`` parses and its dialect and driver load."""
    try:
        make_url(url).get_dialect().import_dbapi()
    except (ArgumentError, ImportError) as exc:  # NoSuchModuleError is an ArgumentError
        raise ConfigError(f"{variable}={mask_url(url)!r} is not a database URL that can be opened here: {exc} "
                          "(e.g. sqlite:///dispatcher.db or postgresql+psycopg://user@host/db)") from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision`` under the migration lock (idempotent).

    Waits as long as another process holds the lock; raises :class:`LedgerError`.
    """
    from alembic import command  # imported to migrate only: it adds ~0.2 s to the start of every command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with _migration_transaction(engine) as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except Exception as exc:  # alembic and drivers raise many kinds
        raise LedgerError(f"cannot migrate the ledger at {engine.url!r}: {exc}") from exc


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or ``None`` before the first migration."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _migration_transaction(engine: Engine) -> AbstractContextManager[Connection]:
    """A transaction on ``engine`` in which no other process migrates the same database; committed on exit."""
    if engine.dialect.name == "postgresql":
        return _advisory_locked(engine)
    if engine.dialect.name == "sqlite":
        return _sqlite_locked(engine)
    return engine.begin()


@contextmanager
def _advisory_locked(engine: Engine) -> Iterator[Connection]:
    """A PostgreSQL transaction holding the migration advisory lock; the commit releases it."""
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        yield connection


@contextmanager
def _sqlite_locked(engine: Engine) -> Iterator[Connection]:
    """A SQLite transaction under the lock file, committed before the lock is let go; else BEGIN EXCLUSIVE."""
    path = _sqlite_file(engine.url)
    with _file_lock(None if path is None else path + LOCK_FILE_SUFFIX) as locked:
        if locked:
            with engine.begin() as connection:
                yield connection
        else:
            with _exclusive_transaction(engine) as connection:
                yield connection


def _sqlite_file(url: URL) -> str | None:
    """The database file of a SQLite URL; ``None`` for in-memory databases and ``file:`` URIs."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


@contextmanager
def _file_lock(path: str | None) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created when missing) while inside; yields ``False`` when none was had."""
    descriptor = _open_lock_file(path)
    if descriptor is None:
        yield False
        return
    try:
        yield _flock(descriptor)
    finally:
        os.close(descriptor)  # releases the lock


def _open_lock_file(path: str | None) -> int | None:
    if path is None or not HAVE_FLOCK:
        return None
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a read-only directory: the migration itself will say what is wrong
        return None


def _flock(descriptor: int) -> bool:
    """Wait for an exclusive lock; ``False`` where the file system has no locks (some network mounts)."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    except OSError:
        return False
    return True


@contextmanager
def _exclusive_transaction(engine: Engine) -> Iterator[Connection]:
    """A SQLite transaction begun with BEGIN EXCLUSIVE: other connections wait (busy timeout) until it ends."""
    with engine.connect() as connection:
        connection.exec_driver_sql("BEGIN EXCLUSIVE")
        yield connection
        connection.commit()


BOOKING_LOCK_KEY = 0x626F6F6B
"""First half of the PostgreSQL advisory lock held while a process of a run books a batch ("book"); the run id is
the second half."""

BOOKING_LOCK_SUFFIX = ".booking.lock"
"""Appended to a SQLite database's path: the file locked while a process of a run books a batch."""


@contextmanager
def booking_lock(engine: Engine, run_id: int) -> Iterator[None]:
    """Inside, no other process of run ``run_id`` books: what it booked before is visible, what it will book waits.

    The processes planning one run's key ranges take it around the check of what the others booked meanwhile and
    the booking itself, so a borrower's two loans in two ranges are capped as if planned one after the other.
    PostgreSQL: a session advisory lock on its own connection. SQLite: ``flock`` on
    ``<database file>.booking.lock`` (the database's own write lock would not cover the check before the write).
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(CAST(:key AS integer), CAST(:run AS integer))"),
                               {"key": BOOKING_LOCK_KEY, "run": run_id % 2**31})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(CAST(:key AS integer), CAST(:run AS integer))"),
                                   {"key": BOOKING_LOCK_KEY, "run": run_id % 2**31})
                connection.commit()
        return
    path = _sqlite_file(engine.url) if engine.dialect.name == "sqlite" else None
    with _file_lock(None if path is None else path + BOOKING_LOCK_SUFFIX):
        yield  # without a lock file (in-memory database): one process only, nothing to exclude


STATISTICS_TABLES = ("attempts", "reminders", "delinquencies", "suppressions")
"""The tables a run reads by lists of account ids, addresses or keys, batch after batch."""


def refresh_statistics(engine: Engine) -> bool:
    """Have PostgreSQL sample the tables a run reads by key lists again (``ANALYZE``); False when it cannot.

    A run that books a large share of a ledger's rows (the first run on a new ledger, a million accounts) makes
    the planner's row counts stale long before autovacuum looks (or never, when autovacuum is off): a batch's
    1,000-id history query was then planned as a scan of the whole attempts table, 235 ms at 425,000 rows and
    growing, instead of 0.7 ms through the account index. Other databases: nothing to do (SQLite keeps using
    its indexes without statistics).
    """
    if engine.dialect.name != "postgresql":
        return True
    try:
        with engine.begin() as connection:
            connection.execute(text(f"ANALYZE {', '.join(STATISTICS_TABLES)}"))
    except SQLAlchemyError as exc:  # not the tables' owner, a lock: the run goes on with the old statistics
        log.warning("ledger: cannot refresh the table statistics (ANALYZE): %s", exc)
        return False
    return True
