"""The SQLite write gate (``dispatcher/ledger/write_gate.py``): writers queue for it instead of SQLite's busy sleeps.

Each test gives the waiting connection a busy timeout of 0, so SQLite alone would answer ``database is locked`` at
once: a write that succeeds there waited at the gate.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text

from dispatcher.ledger.database import create_ledger_engine
from dispatcher.ledger.write_gate import LOCK_FILE_SUFFIX

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def engine(workdir: Path) -> Iterator[Engine]:
    made = create_ledger_engine(f"sqlite:///{workdir / 'gate.db'}", lock_timeout=10)
    with made.begin() as connection:
        connection.execute(text("CREATE TABLE notes (n INTEGER)"))
    yield made
    made.dispose()


def _impatient(connection: Connection) -> None:
    """SQLite alone would fail this connection's write at once while another holds the lock."""
    connection.exec_driver_sql("PRAGMA busy_timeout=0")


def _insert_in_thread(engine: Engine, value: int, order: list[str], errors: list[BaseException]) -> threading.Thread:
    def insert() -> None:
        try:
            with engine.connect() as connection:
                _impatient(connection)
                order.append("second writer starts")
                connection.execute(text("INSERT INTO notes VALUES (:n)"), {"n": value})
                connection.commit()
                order.append("second writer committed")
        except BaseException as exc:
            errors.append(exc)

    return threading.Thread(target=insert)


def _notes(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(text("SELECT n FROM notes ORDER BY n"))]


def test_a_writer_of_this_process_waits_for_the_one_writing(engine: Engine) -> None:
    order: list[str] = []
    errors: list[BaseException] = []
    with engine.connect() as first:
        first.execute(text("INSERT INTO notes VALUES (1)"))  # holds the write lock and the gate
        second = _insert_in_thread(engine, 2, order, errors)
        second.start()
        second.join(0.5)
        assert second.is_alive(), "the second writer must wait while the first one's transaction is open"
        order.append("first writer commits")
        first.commit()
    second.join(10)
    assert errors == []
    assert order == ["second writer starts", "first writer commits", "second writer committed"]
    assert _notes(engine) == [1, 2]


def test_a_rollback_or_a_closed_connection_lets_the_gate_go(engine: Engine) -> None:
    for end in ("rollback", "close"):
        with engine.connect() as connection:  # kept checked out: the second writer gets a connection of its own
            connection.execute(text("INSERT INTO notes VALUES (9)"))
            if end == "rollback":
                connection.rollback()
            else:
                connection.invalidate()  # closes the driver's connection, open transaction and all
            order: list[str] = []
            errors: list[BaseException] = []
            second = _insert_in_thread(engine, 3, order, errors)
            second.start()
            second.join(3)
            assert not second.is_alive(), f"after a {end}, a gate still held keeps the writer 10 s (lock timeout)"
            assert errors == [] and order[-1] == "second writer committed", end
    assert _notes(engine) == [3, 3]


def test_a_writer_waits_for_another_process_writing(engine: Engine, workdir: Path) -> None:
    database = workdir / "gate.db"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from sqlalchemy import text
        from dispatcher.ledger.database import create_ledger_engine
        engine = create_ledger_engine("sqlite:///{database}", lock_timeout=10)
        with engine.connect() as connection:
            connection.execute(text("INSERT INTO notes VALUES (1)"))
            print("writing", flush=True)
            sys.stdin.readline()  # the test says when to commit
            connection.commit()
        print("committed", flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "writing"
        assert (workdir / f"gate.db{LOCK_FILE_SUFFIX}").exists()
        order: list[str] = []
        errors: list[BaseException] = []
        second = _insert_in_thread(engine, 2, order, errors)
        second.start()
        second.join(0.5)
        assert second.is_alive(), "the writer must wait while the other process's transaction is open"
        order.append("other process commits")
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "committed"
        second.join(10)
    finally:
        holder.kill()
        holder.wait()
    assert errors == []
    assert order == ["second writer starts", "other process commits", "second writer committed"]
    assert _notes(engine) == [1, 2]
