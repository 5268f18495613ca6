"""Logging set-up: one handler on stderr, personal data masked in every line.

Two formats (``DISPATCHER_LOG_FORMAT``): ``text``, one readable line per record,
and ``json``, one JSON object per line for Loki or Elasticsearch, with the
fields ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, then
``run_id``, ``attempt_id`` and ``account_id`` when the record carries them and
``exc`` for a traceback. Context comes from a log call's ``extra=`` (see
:func:`job_fields`) or, for everything a run logs, from :func:`log_context`.
Message, traceback and context values are masked as the text lines are.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

from dispatcher.masking import MaskingFilter, MaskingFormatter, mask_text

if TYPE_CHECKING:
    from dispatcher.pipeline.jobs import DeliveryJob

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

CONTEXT_FIELDS = ("run_id", "attempt_id", "account_id")
"""Record attributes a JSON line carries as fields of their own when set."""

_context: ContextVar[Mapping[str, object]] = ContextVar("dispatcher_log_context", default=MappingProxyType({}))
"""The fields every record logged in this context carries (a run sets its ``run_id``)."""


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Records logged inside (this thread, and the asyncio tasks started inside) carry ``fields``."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def job_fields(job: DeliveryJob) -> dict[str, object]:
    """The ``extra=`` of a log call about one delivery attempt."""
    return {"run_id": job.run_id, "attempt_id": job.attempt_id, "account_id": job.account.account_id}


class ContextFilter(logging.Filter):
    """Copies the fields of :func:`log_context` onto a record that does not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message or traceback are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_text(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value if isinstance(value, int) else mask_text(str(value))
        if record.exc_info:
            entry["exc"] = mask_text(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = mask_text(record.exc_text)
        if record.stack_info:
            entry["stack"] = mask_text(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Send logs to stderr with phone numbers and emails masked; quiet noisy libraries.

    ``log_format`` is ``text`` or ``json`` (see the module docstring).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else MaskingFormatter(LOG_FORMAT))
    handler.addFilter(MaskingFilter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("alembic", "apscheduler.executors", "apscheduler.scheduler", "aiosmtpd", "httpx", "twilio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
