"""Typed, frozen settings of the SMS, email and push providers, read once at start-up.

Each ``from_env(env)`` returns ``None`` when its provider is not configured and
raises :class:`dispatcher.errors.ConfigError` listing every problem when it is
configured wrongly. Secrets (auth token, SMTP password, private key) are kept out
of ``repr()``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr, parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from dispatcher.errors import ConfigError, Problem

DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"
"""Twilio's own REST API; point it at a stand-in in tests."""
DEFAULT_TWILIO_TIMEOUT = 10.0
"""Seconds one Twilio API call may take before it counts as a transient failure."""
MAX_TWILIO_VALIDITY_PERIOD = 36_000
"""Twilio accepts a validity period of 1 to 36,000 seconds."""
DEFAULT_SMTP_TIMEOUT = 10.0
"""Seconds one SMTP command may take."""
DEFAULT_FCM_API_BASE_URL = "https://fcm.googleapis.com"
"""Google's FCM HTTP v1 endpoint."""
DEFAULT_FCM_TIMEOUT = 10.0
"""Seconds one FCM or OAuth2 call may take."""
STATUS_CALLBACK_PATH = "/webhooks/twilio/status"
"""Where the web app receives Twilio status callbacks, below ``DISPATCHER_PUBLIC_URL``."""

_T = TypeVar("_T")


class _Problems:
    """Collects every problem of one provider's variables before raising once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.items: list[Problem] = []

    def add(self, name: str, message: str) -> None:
        self.items.append(Problem("<environment>", 0, 0, f"{name}: {message}", rule="env"))

    def get(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def parse(self, name: str, convert: Callable[[str], _T], default: _T) -> _T:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            return convert(raw)
        except ValueError as exc:
            self.add(name, f"{raw!r} is not valid ({exc})")
            return default

    def url(self, name: str, default: str) -> str:
        value = self.get(name) or default
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.add(name, f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError("must be between 1 and 65535")
    return value


def _validity_period(raw: str) -> int:
    value = int(raw)
    if not 0 < value <= MAX_TWILIO_VALIDITY_PERIOD:
        raise ValueError(f"must be between 1 and {MAX_TWILIO_VALIDITY_PERIOD} seconds")
    return value


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); ``None`` if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    """Twilio Programmable Messaging: credentials, sender and API endpoint."""

    account_sid: str
    auth_token: str = field(repr=False)
    from_number: str | None = None
    messaging_service_sid: str | None = None
    api_base_url: str = DEFAULT_TWILIO_API_BASE_URL
    validity_period: int | None = None
    timeout: float = DEFAULT_TWILIO_TIMEOUT
    status_callback: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TwilioSettings | None:
        """Read ``TWILIO_*`` and ``DISPATCHER_PUBLIC_URL``; ``None`` without ``TWILIO_ACCOUNT_SID``."""
        p = _Problems(env)
        sid = p.get("TWILIO_ACCOUNT_SID")
        if sid is None:
            return None
        token = p.get("TWILIO_AUTH_TOKEN")
        if token is None:
            p.add("TWILIO_AUTH_TOKEN", "required when TWILIO_ACCOUNT_SID is set")
        sender, service = p.get("TWILIO_FROM_NUMBER"), p.get("TWILIO_MESSAGING_SERVICE_SID")
        if sender is None and service is None:
            p.add("TWILIO_FROM_NUMBER", "it or TWILIO_MESSAGING_SERVICE_SID is required with the SID")
        public = p.get("DISPATCHER_PUBLIC_URL")
        settings = cls(
            account_sid=sid,
            auth_token=token or "",
            from_number=sender,
            messaging_service_sid=service,
            api_base_url=p.url("TWILIO_API_BASE_URL", DEFAULT_TWILIO_API_BASE_URL),
            validity_period=p.parse("TWILIO_VALIDITY_PERIOD", _validity_period, None),
            timeout=p.parse("TWILIO_TIMEOUT", _positive_float, DEFAULT_TWILIO_TIMEOUT),
            status_callback=p.url("DISPATCHER_PUBLIC_URL", public) + STATUS_CALLBACK_PATH if public else None,
        )
        p.raise_if_any()
        return settings


class SmtpSecurity(StrEnum):
    """How the SMTP connection is protected."""

    NONE = "none"
    STARTTLS = "starttls"
    SSL = "ssl"  # implicit TLS from the first byte (port 465)


DEFAULT_SMTP_PORTS = {SmtpSecurity.NONE: 25, SmtpSecurity.STARTTLS: 587, SmtpSecurity.SSL: 465}
"""The usual port of each security mode, used when ``SMTP_PORT`` is not set."""


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """An SMTP relay (submission server) and the sender address."""

    host: str
    port: int
    email_from: str
    security: SmtpSecurity = SmtpSecurity.STARTTLS
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_SMTP_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SmtpSettings | None:
        """Read ``SMTP_*`` and ``EMAIL_FROM``; ``None`` without ``SMTP_HOST``."""
        p = _Problems(env)
        host = p.get("SMTP_HOST")
        if host is None:
            return None
        security = p.parse("SMTP_SECURITY", lambda raw: SmtpSecurity(raw.lower()), SmtpSecurity.STARTTLS)
        sender = p.get("EMAIL_FROM")
        if sender is None or "@" not in parseaddr(sender)[1]:
            p.add("EMAIL_FROM", "an address like 'Brand <noreply@example.com>' is required with SMTP_HOST")
        username, password = p.get("SMTP_USERNAME"), p.get("SMTP_PASSWORD")
        if (username is None) != (password is None):
            p.add("SMTP_USERNAME", "SMTP_USERNAME and SMTP_PASSWORD must be set together")
        settings = cls(
            host=host,
            port=p.parse("SMTP_PORT", _port, DEFAULT_SMTP_PORTS[security]),
            email_from=sender or "",
            security=security,
            username=username,
            password=password,
            timeout=p.parse("SMTP_TIMEOUT", _positive_float, DEFAULT_SMTP_TIMEOUT),
        )
        p.raise_if_any()
        return settings


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The parts of a Google service-account JSON key that the OAuth2 JWT flow needs."""

    client_email: str
    private_key: str = field(repr=False)
    token_uri: str
    private_key_id: str | None = None
    project_id: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> ServiceAccount:
        """Load a key file; raise :class:`ConfigError` when it is unreadable or incomplete."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"FCM_CREDENTIALS_FILE: cannot read {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"FCM_CREDENTIALS_FILE: {path} is not a JSON object")
        missing = [k for k in ("client_email", "private_key", "token_uri") if not isinstance(raw.get(k), str)]
        if missing:
            raise ConfigError(f"FCM_CREDENTIALS_FILE: {path} lacks {', '.join(missing)}")
        return cls(raw["client_email"], raw["private_key"], raw["token_uri"],
                   raw.get("private_key_id"), raw.get("project_id"))


@dataclass(frozen=True, slots=True)
class FcmSettings:
    """Firebase Cloud Messaging HTTP v1: project, service account and API endpoint."""

    project_id: str
    credentials: ServiceAccount
    api_base_url: str = DEFAULT_FCM_API_BASE_URL
    timeout: float = DEFAULT_FCM_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FcmSettings | None:
        """Read ``FCM_*``; ``None`` when neither the project nor the credentials file is set."""
        p = _Problems(env)
        project, path = p.get("FCM_PROJECT_ID"), p.get("FCM_CREDENTIALS_FILE")
        if project is None and path is None:
            return None
        if path is None:
            p.add("FCM_CREDENTIALS_FILE", "a service-account JSON file is required with FCM_PROJECT_ID")
            p.raise_if_any()
        credentials = ServiceAccount.from_file(Path(str(path)))
        project = project or credentials.project_id
        if project is None:
            p.add("FCM_PROJECT_ID", "not set and the credentials file names no project_id")
        settings = cls(
            project_id=project or "",
            credentials=credentials,
            api_base_url=p.url("FCM_API_BASE_URL", DEFAULT_FCM_API_BASE_URL),
            timeout=p.parse("FCM_TIMEOUT", _positive_float, DEFAULT_FCM_TIMEOUT),
        )
        p.raise_if_any()
        return settings
