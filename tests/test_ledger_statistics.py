"""A run that grows the ledger has PostgreSQL refresh its statistics (dispatcher/ledger/database.py).

Found by the million-account benchmark on a server with autovacuum off: the tables were never analyzed, and a
batch's history query (1,000 account ids) was planned as a scan of the whole attempts table, slower with every
batch. On SQLite nothing is done (it uses its indexes without statistics).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import FixedClock
from sqlalchemy import Engine, inspect, text

from dispatcher.app import App, build_app
from dispatcher.demo import seed_demo
from dispatcher.ledger.database import STATISTICS_TABLES, refresh_statistics
from dispatcher.pipeline import run
from dispatcher.pipeline.run import Runner
from dispatcher.settings import Settings


def analyzed(engine: Engine) -> dict[str, int]:
    """How many times each table was analyzed (PostgreSQL's statistics views)."""
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        rows = connection.execute(text(
            "SELECT relname, analyze_count FROM pg_stat_user_tables WHERE schemaname = current_schema()")).all()
    return {name: int(count) for name, count in rows if name in STATISTICS_TABLES}


def test_refreshing_the_statistics_analyzes_the_history_tables_on_postgresql(app: App, ledger_backend: str) -> None:
    assert refresh_statistics(app.engine)
    if ledger_backend == "sqlite":  # nothing to do: no statistics table appears
        assert "sqlite_stat1" not in inspect(app.engine).get_table_names()
        return
    deadline = time.monotonic() + 5
    while set(analyzed(app.engine).values()) != {1} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert analyzed(app.engine) == dict.fromkeys(STATISTICS_TABLES, 1)


def test_a_run_refreshes_them_as_the_accounts_it_read_double(
        workdir: Path, anytime: Path, clock: FixedClock, ledger_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 20, the first refresh at 40 accounts: 300 accounts refresh at 40, 80 and 160 (three times);
    on SQLite the refreshes change nothing."""
    anytime.write_text(anytime.read_text("utf-8").replace("batch_size: 1000", "batch_size: 20"), "utf-8")
    monkeypatch.setattr(run, "STATISTICS_AT", 40)
    monkeypatch.setenv("DISPATCHER_PLAN_PROCESSES", "1")
    app = build_app(Settings.from_env(), clock=clock)
    seed_demo(app.engine, 300, clock().date())
    assert Runner(app).run("manual", clock()).status == "completed"
    if ledger_backend == "sqlite":
        assert "sqlite_stat1" not in inspect(app.engine).get_table_names()
        app.engine.dispose()
        return
    deadline = time.monotonic() + 5
    while analyzed(app.engine).get("attempts") != 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert analyzed(app.engine) == dict.fromkeys(STATISTICS_TABLES, 3)
    app.engine.dispose()
