"""Shared fixtures: a working directory with the shipped schedule, an app on a fixed clock, servers.

The ledger runs on SQLite (default) or PostgreSQL: ``pytest --ledger=postgresql`` (or
``DISPATCHER_TEST_LEDGER=postgresql``) gives every test its own empty schema in the
local server's ``test`` database, migrated by the same Alembic scripts. Tests get the
ledger's URL from the ``ledger_url`` fixture (``make_ledger_url(name)`` for more than one
database); none builds a ``sqlite:///`` URL itself.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redisdb import claimed_database
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from standins.fcm_server import FcmStandin
from standins.smtp_server import SmtpStandin
from standins.twilio_server import TwilioStandin
from standins.twilio_voice_server import TwilioVoiceStandin

from dispatcher.app import App, build_app
from dispatcher.cli import main
from dispatcher.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI") == "true"
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LEDGERS = ("sqlite", "postgresql")
LEDGER_ENV = "DISPATCHER_TEST_LEDGER"
"""Chooses the ledger backend when ``--ledger`` is not given."""

NOW = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)
"""The fixed moment of in-process tests: 09:00 in Asia/Shanghai, the shipped schedule's zone."""

UNSET = ("DISPATCHER_SOURCE_URL", "DISPATCHER_PUBLIC_URL", "DISPATCHER_SECRET_KEY", "TWILIO_ACCOUNT_SID",
         "SMTP_HOST", "FCM_PROJECT_ID", "FCM_CREDENTIALS_FILE", "DISPATCHER_METRICS_TOKEN")
"""Variables that would point the workdir's app at a real source or real providers instead of the outbox."""


@dataclass
class FixedClock:
    """A clock that only moves when told to."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ledger", choices=LEDGERS, default=None,
        help=f"ledger database of the tests: sqlite (a file per test, the default) or postgresql (a schema per "
             f"test in {POSTGRES_URL}); default: ${LEDGER_ENV}, else sqlite")


def ledger_choice(config: pytest.Config) -> str:
    """The ledger backend of this session: --ledger, else $DISPATCHER_TEST_LEDGER, else sqlite."""
    chosen = config.getoption("--ledger") or os.environ.get(LEDGER_ENV, "").strip().lower() or "sqlite"
    if chosen not in LEDGERS:
        raise pytest.UsageError(f"{LEDGER_ENV}={chosen!r}: expected one of {', '.join(LEDGERS)}")
    return str(chosen)


def pytest_configure(config: pytest.Config) -> None:
    ledger_choice(config)  # a bad $DISPATCHER_TEST_LEDGER is a usage error, not 600 errored tests
    config.addinivalue_line("markers", "ledger: uses the session's ledger database (set automatically for every "
                                       "test that uses ledger_url or make_ledger_url, also through workdir or app)")


LEDGER_FIXTURES = frozenset({"ledger_url", "make_ledger_url"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that touch the ledger, so ``-m ledger`` selects what ``--ledger`` changes."""
    for item in items:
        if LEDGER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ledger)


def pytest_report_header(config: pytest.Config) -> str:
    return f"ledger: {ledger_choice(config)}"


@pytest.fixture(scope="session")
def ledger_backend(pytestconfig: pytest.Config) -> str:
    """``sqlite`` or ``postgresql``: where this session's ledgers live."""
    return ledger_choice(pytestconfig)


def schema_url(schema: str) -> str:
    """The URL of the ``test`` database with ``schema`` alone on the search path (tables, alembic_version)."""
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def _schemas(postgres_url: str) -> Iterator[tuple[Engine, set[str]]]:
    """An autocommit engine on the ``test`` database and the per-test schemas still to drop."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    pending: set[str] = set()
    yield admin, pending
    for schema in sorted(pending):
        drop_schema(admin, schema)
    admin.dispose()


def drop_schema(admin: Engine, schema: str) -> None:
    """DROP SCHEMA … CASCADE; a connection a test leaked inside a transaction is ended rather than waited for."""
    drop = text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    with admin.connect() as connection:
        connection.execute(text("SET lock_timeout = '5s'"))
        try:
            connection.execute(drop)
        except OperationalError:
            connection.execute(text(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema "
                "AND l.pid <> pg_backend_pid()"), {"schema": schema})
            connection.execute(drop)


LedgerUrls = Callable[..., str]
"""``make_ledger_url(name="ledger") -> url``."""


@pytest.fixture
def make_ledger_url(request: pytest.FixtureRequest, tmp_path: Path, ledger_backend: str) -> Iterator[LedgerUrls]:
    """``make_ledger_url(name="ledger")``: the URL of an empty database of this test, the same for the same name.

    SQLite: ``tmp_path/<name>.db``. PostgreSQL: a fresh schema ``t_<random>`` of the
    ``test`` database, selected through the connection's search path, dropped
    (CASCADE) after the test. Skipped locally, failed in CI, without a server.
    """
    made: dict[str, str] = {}
    server: list[tuple[Engine, set[str]]] = []  # the session's admin engine, once a schema was made
    schemas: list[str] = []

    def make(name: str = "ledger") -> str:
        if name not in made:
            if ledger_backend == "sqlite":
                made[name] = f"sqlite:///{tmp_path / f'{name}.db'}"
            else:
                if not server:
                    server.append(request.getfixturevalue("_schemas"))
                admin, pending = server[0]
                schema = f"t_{secrets.token_hex(8)}"
                with admin.connect() as connection:
                    connection.execute(text(f'CREATE SCHEMA "{schema}"'))
                pending.add(schema)
                schemas.append(schema)
                made[name] = schema_url(schema)
        return made[name]

    yield make
    for admin, pending in server:
        for schema in schemas:
            drop_schema(admin, schema)
            pending.discard(schema)


@pytest.fixture
def ledger_url(make_ledger_url: LedgerUrls) -> str:
    """The URL of this test's (empty) ledger database; ``workdir`` points ``DISPATCHER_DATABASE_URL`` at it."""
    return make_ledger_url()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger_url: str) -> Path:
    """A temporary directory holding schedules.yaml and templates/, the process's working directory."""
    shutil.copy(REPO / "schedules.yaml", tmp_path / "schedules.yaml")
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", ledger_url)
    monkeypatch.setenv("DISPATCHER_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("DISPATCHER_SCHEDULES", str(tmp_path / "schedules.yaml"))
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def anytime(workdir: Path) -> Path:
    """The workdir's schedules.yaml on profile ``none`` (no contact window, no caps), for runs on the real clock."""
    path = workdir / "schedules.yaml"
    content, found = re.subn(r"(?m)^profile: *\w+", "profile: none", path.read_text(encoding="utf-8"))
    path.write_text(content if found else f"profile: none\n{content}", encoding="utf-8")
    return path


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


@pytest.fixture
def broker_url_db(redis_url: str) -> Iterator[str]:
    """``redis://127.0.0.1:6379/<n>``: an empty Redis database claimed for this test (a broker, a queue), emptied after.

    Database 0 holds the rate limits of every test, so a broker gets one of 1-15 of its own.
    """
    with claimed_database(redis_url) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL server that accepts a connection; skipped locally, a failure in CI, when there is none."""
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


Cli = Callable[..., tuple[int, str, str]]
"""Runs one ``dispatcher`` command in-process; returns (exit code, stdout, stderr)."""


@pytest.fixture(autouse=True, scope="session")
def _fresh_caches_under_mutation() -> None:
    """Under mutmut, each mutant's tests run in a process forked after collection: results that ``lru_cache``
    kept from collecting (compiled word patterns, parsed phones) would hide the mutant. Start them afresh."""
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    for name, module in list(sys.modules.items()):
        if name == "dispatcher" or name.startswith("dispatcher."):
            for value in list(vars(module).values()):
                clear = getattr(value, "cache_clear", None)
                if callable(clear):
                    clear()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``dispatcher.cli.main`` configures the root logger for a process; put it back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def cli(workdir: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """The command line, run in the workdir's environment."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def twilio() -> Iterator[TwilioStandin]:
    """A Twilio-like REST server on loopback: messages, and calls checked against Twilio's API description
    (tests/standins/twilio_server.py, twilio_voice_server.py)."""
    with TwilioVoiceStandin() as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[SmtpStandin]:
    """A real SMTP server (aiosmtpd) on loopback."""
    with SmtpStandin() as server:
        yield server


@pytest.fixture
def fcm() -> Iterator[FcmStandin]:
    """An FCM HTTP v1 server and OAuth2 token endpoint on loopback."""
    with FcmStandin() as server:
        yield server


@pytest.fixture
def runtime_factory() -> Iterator[Callable[[], Any]]:
    """Builds Celery worker runtimes from the environment (as each pool process does: dispatcher/worker.py) and
    closes them after the test."""
    from dispatcher import worker  # Celery is imported only by the tests that drive a worker

    built: list[worker._Runtime] = []

    def make() -> worker._Runtime:
        built.append(worker._Runtime())
        return built[-1]

    yield make
    for runtime in built:
        runtime.close()
        runtime.app.engine.dispose()
