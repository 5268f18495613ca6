"""Shared fixtures: a working directory with the shipped schedule, an app on a fixed clock, servers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dispatcher.app import App, build_app
from dispatcher.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI") == "true"
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

NOW = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)
"""The fixed moment of in-process tests: 09:00 in Asia/Shanghai, the shipped schedule's zone."""


@dataclass
class FixedClock:
    """A clock that only moves when told to."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory holding schedules.yaml and templates/, the process's working directory."""
    shutil.copy(REPO / "schedules.yaml", tmp_path / "schedules.yaml")
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("DISPATCHER_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("DISPATCHER_SCHEDULES", str(tmp_path / "schedules.yaml"))
    monkeypatch.delenv("DISPATCHER_SOURCE_URL", raising=False)
    return tmp_path


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def app(workdir: Path, clock: FixedClock) -> Iterator[App]:
    """The wired dispatcher on the workdir's ledger, migrated, with the fixed clock."""
    built = build_app(Settings.from_env(), clock=clock)
    yield built
    built.engine.dispose()


def _unreachable(what: str, url: str, exc: Exception) -> None:
    message = f"{what} not reachable at {url}: {exc}"
    if CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis server that answers PING; skipped locally, a failure in CI, when there is none."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unreachable("Redis", REDIS_URL, exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL server that accepts a connection; skipped locally, a failure in CI, when there is none."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        _unreachable("PostgreSQL", POSTGRES_URL, exc)
    finally:
        engine.dispose()
    return POSTGRES_URL
