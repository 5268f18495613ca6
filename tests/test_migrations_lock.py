"""Migrations under a database lock: processes starting at once on a new ledger all succeed.

Each process imports the package and builds its engine first, says ``ready``, and
calls ``upgrade`` only when told ``go`` on stdin, so the migrations really overlap.
On SQLite the processes also run without ``flock`` (as where there is no ``fcntl``):
the migration's BEGIN EXCLUSIVE transaction is then the lock.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import make_url

from dispatcher.ledger.database import LOCK_FILE_SUFFIX, MIGRATIONS_DIR, create_ledger_engine, current_revision, upgrade

PROCESSES = 4
"""Processes migrating the same fresh database at once."""

MIGRATE = """
import sys
from dispatcher.ledger import database
from dispatcher.ledger.database import create_ledger_engine, upgrade
database.HAVE_FLOCK = sys.argv[2] == "flock"
engine = create_ledger_engine(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
upgrade(engine)
engine.dispose()
"""


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def migrate_at_once(url: str, cwd: Path, lock: str) -> list[tuple[int, str]]:
    """Start ``PROCESSES`` migrating processes, release them together; (exit code, stderr) of each."""
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE, url, lock], cwd=cwd, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(PROCESSES)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=60)[1]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return [(proc.wait(timeout=120), proc.communicate(timeout=10)[1]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("lock", ["flock", "no-flock"])
def test_processes_migrating_a_fresh_ledger_at_once_all_succeed(ledger_url: str, tmp_path: Path, lock: str) -> None:
    sqlite_file = make_url(ledger_url).database if ledger_url.startswith("sqlite") else None
    if lock == "no-flock" and sqlite_file is None:
        pytest.skip("flock is only used for SQLite files")

    results = migrate_at_once(ledger_url, tmp_path, lock)

    assert [code for code, _ in results] == [0] * PROCESSES, "\n".join(err for _, err in results)
    engine = create_ledger_engine(ledger_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    if sqlite_file is not None:
        assert Path(sqlite_file + LOCK_FILE_SUFFIX).exists() == (lock == "flock")


def test_upgrade_again_at_head_changes_nothing(ledger_url: str) -> None:
    engine = create_ledger_engine(ledger_url)
    try:
        upgrade(engine)
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_migrates_without_a_lock_file(url: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    engine = create_ledger_engine(url)  # one connection per thread: the same in-memory database throughout
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    assert list(tmp_path.iterdir()) == []
