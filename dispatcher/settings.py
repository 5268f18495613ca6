"""Environment settings: typed, frozen, read once at start-up (never deep in business code).

Provider credentials live in :mod:`dispatcher.channels.provider_settings`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dispatcher.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///dispatcher.db"
"""The embedded ledger: a SQLite file in the working directory."""

DEFAULT_OUTBOX_DIR = "outbox"
"""Where the outbox channels write messages when no provider is configured."""

DEFAULT_CONCURRENCY = 32
"""Provider requests in flight per process."""

DEFAULT_MAX_TRIES = 3
"""Tries per reminder and channel before a transient failure becomes ``failed``."""

DEFAULT_VISIBILITY_TIMEOUT = 3600
"""Seconds before Redis hands an unacknowledged task to another worker; no retry waits longer."""

DEFAULT_RECONCILE_AFTER = 300
"""Seconds an attempt may stay ``sending`` before it is taken for the leftover of a crash."""

DEFAULT_RUN_LEASE = 60
"""Seconds a run stays its daemon's without renewal; then another daemon may take it over."""

DEFAULT_RUN_TIMEOUT = 7200
"""Seconds a daemon waits for the workers to finish a run's deliveries before it gives up on it."""

DEFAULT_SWEEP_AFTER = 30
"""Seconds a run with a broker may go without progress before lost tasks are looked for."""

DEFAULT_STALL_TIMEOUT = 600
"""Seconds a run with a broker may go without any progress before it is marked failed."""

DEFAULT_PROGRESS_INTERVAL = 10.0
"""Seconds between two progress lines of a run in the log (accounts read, planned, sent); 0 turns them off."""

DEFAULT_WEB_BODY_TIMEOUT = 10
"""Seconds ``dispatcher web`` waits for a request's whole body before answering 408 and closing."""

DEFAULT_WEB_MAX_BODY = 64 * 1024
"""Bytes a request body to ``dispatcher web`` may have; a larger one gets 413 (webhooks and forms are small)."""

DEFAULT_PLAN_RANGES = 16
"""Key ranges a run is split into at most with a broker (each of at least five source batches): enough to keep a
few machines' worker processes busy, and each range's start (a second of wiring) stays small against its work."""

EVENT_LOOPS = ("uvloop", "asyncio")
"""The event loop delivery runs on: uvloop (libuv, where installed) or the standard library's."""

UNKNOWN_OUTCOME_POLICIES = ("mark-unknown", "resend")
"""What to do with a crashed send the provider cannot be asked about."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""The values of ``DISPATCHER_LOG_LEVEL`` and ``--log-level`` (any case); INFO when unset."""

LOG_FORMATS = ("text", "json")
"""The values of ``DISPATCHER_LOG_FORMAT``: readable lines (the default) or one JSON object per line."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration in seconds, decimals allowed, 0 or more."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{name}={raw} must be 0 or more seconds")
    return value


def _port(env: Mapping[str, str], name: str) -> int | None:
    """A TCP port (1-65535), ``None`` when unset."""
    if not env.get(name, "").strip():
        return None
    port = _int(env, name, 0)
    if port > 65535:
        raise ConfigError(f"{name}={port} is not a TCP port (1-65535)")
    return port


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or choices[0]
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def log_level(env: Mapping[str, str]) -> str:
    """``DISPATCHER_LOG_LEVEL`` in capitals, INFO when unset; raises :class:`ConfigError` for another word."""
    value = env.get("DISPATCHER_LOG_LEVEL", "").strip().upper() or LOG_LEVELS[1]
    if value not in LOG_LEVELS:
        raise ConfigError(f"DISPATCHER_LOG_LEVEL={env['DISPATCHER_LOG_LEVEL']!r} must be one of "
                          f"{', '.join(LOG_LEVELS)}")
    return value


def log_format(env: Mapping[str, str]) -> str:
    """``DISPATCHER_LOG_FORMAT`` in lower case, ``text`` when unset; raises :class:`ConfigError` for another word."""
    value = env.get("DISPATCHER_LOG_FORMAT", "").strip().lower() or LOG_FORMATS[0]
    if value not in LOG_FORMATS:
        raise ConfigError(f"DISPATCHER_LOG_FORMAT={env['DISPATCHER_LOG_FORMAT']!r} must be one of "
                          f"{', '.join(LOG_FORMATS)}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the dispatcher reads from the environment (see the README's reference)."""

    schedules_path: Path
    database_url: str
    outbox_dir: Path
    broker_url: str | None
    public_url: str | None
    secret_key: bytes = field(repr=False)
    concurrency: int
    max_tries: int
    log_level: str
    daemon_id: str
    visibility_timeout: int
    reconcile_after: int
    run_timeout: int
    stall_timeout: int
    sweep_after: int
    run_lease: int
    unknown_outcome: str
    event_loop: str
    env: Mapping[str, str] = field(repr=False, compare=False)
    metrics_token: str | None = field(default=None, repr=False)
    metrics_port: int | None = None
    """``dispatcher web`` serves ``/metrics`` on this port of its own instead of its main port."""
    metrics_host: str | None = None
    """The address of that port (``0.0.0.0`` for a Prometheus elsewhere); ``None``: the web server's ``--host``."""
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    """Seconds between two progress lines of a run (``DISPATCHER_PROGRESS_INTERVAL``); 0: none."""
    web_body_timeout: int = DEFAULT_WEB_BODY_TIMEOUT
    web_max_body: int = DEFAULT_WEB_MAX_BODY
    plan_processes: int = 1
    """Processes that plan, book and deliver one run's key ranges without a broker (``DISPATCHER_PLAN_PROCESSES``,
    by default the number of cores); a source too small to split runs in the daemon's process."""
    plan_ranges: int = DEFAULT_PLAN_RANGES
    """Key ranges one run is split into at most with a broker, each planned, booked and delivered by a Celery task
    (``DISPATCHER_PLAN_RANGES``); 1: the daemon plans and books, the workers only deliver."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, schedules: str | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        secret = env.get("DISPATCHER_SECRET_KEY", "")
        public_url = (env.get("DISPATCHER_PUBLIC_URL") or "").rstrip("/") or None
        if public_url and not secret:
            raise ConfigError("DISPATCHER_SECRET_KEY must be set when DISPATCHER_PUBLIC_URL is "
                              "(it signs unsubscribe links)")
        return cls(
            schedules_path=Path(schedules or env.get("DISPATCHER_SCHEDULES") or "schedules.yaml"),
            database_url=env.get("DISPATCHER_DATABASE_URL") or DEFAULT_DATABASE_URL,
            outbox_dir=Path(env.get("DISPATCHER_OUTBOX_DIR") or DEFAULT_OUTBOX_DIR),
            broker_url=env.get("DISPATCHER_BROKER_URL") or None,
            public_url=public_url,
            secret_key=secret.encode() if secret else b"",
            concurrency=_int(env, "DISPATCHER_CONCURRENCY", DEFAULT_CONCURRENCY),
            max_tries=_int(env, "DISPATCHER_MAX_TRIES", DEFAULT_MAX_TRIES),
            log_level=log_level(env),
            daemon_id=env.get("DISPATCHER_DAEMON_ID") or f"{socket.gethostname()}:{os.getpid()}",
            visibility_timeout=_int(env, "DISPATCHER_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT),
            reconcile_after=_int(env, "DISPATCHER_RECONCILE_AFTER", DEFAULT_RECONCILE_AFTER),
            run_timeout=_int(env, "DISPATCHER_RUN_TIMEOUT", DEFAULT_RUN_TIMEOUT),
            stall_timeout=_int(env, "DISPATCHER_STALL_TIMEOUT", DEFAULT_STALL_TIMEOUT),
            sweep_after=_int(env, "DISPATCHER_SWEEP_AFTER", DEFAULT_SWEEP_AFTER),
            run_lease=_int(env, "DISPATCHER_RUN_LEASE", DEFAULT_RUN_LEASE),
            unknown_outcome=_choice(env, "DISPATCHER_UNKNOWN_OUTCOME", UNKNOWN_OUTCOME_POLICIES),
            event_loop=_choice(env, "DISPATCHER_EVENT_LOOP", EVENT_LOOPS),
            env=env,
            metrics_token=env.get("DISPATCHER_METRICS_TOKEN", "").strip() or None,
            metrics_port=_port(env, "DISPATCHER_METRICS_PORT"),
            metrics_host=env.get("DISPATCHER_METRICS_HOST", "").strip() or None,
            progress_interval=_seconds(env, "DISPATCHER_PROGRESS_INTERVAL", DEFAULT_PROGRESS_INTERVAL),
            web_body_timeout=_int(env, "DISPATCHER_WEB_BODY_TIMEOUT", DEFAULT_WEB_BODY_TIMEOUT),
            web_max_body=_int(env, "DISPATCHER_WEB_MAX_BODY", DEFAULT_WEB_MAX_BODY),
            plan_processes=_int(env, "DISPATCHER_PLAN_PROCESSES", os.cpu_count() or 1),
            plan_ranges=_int(env, "DISPATCHER_PLAN_RANGES", DEFAULT_PLAN_RANGES),
        )
