"""The exception tree of the dispatcher.

Every error the package raises on purpose derives from :class:`DispatcherError`::

    DispatcherError
     ├── ConfigError              schedules.yaml or the environment is invalid (carries problems)
     ├── SourceError              the lender's account source cannot be read
     ├── TemplateError            a template is missing or fails to render
     ├── LedgerError              the ledger cannot be read or written
     ├── BrokerError              the Celery broker (DISPATCHER_BROKER_URL) cannot be reached
     └── DeliveryError            a channel could not hand a message over
          ├── TransientDeliveryError   worth retrying later (carries retry_after)
          └── PermanentDeliveryError   never retried (bad address, opt-out, ...)

Channels do not raise for an ordinary provider refusal: they return a
:class:`dispatcher.channels.base.DeliveryResult` that says sent / transient /
permanent. The delivery errors exist for callers that prefer exceptions
(Celery task retries) and carry the same facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DispatcherError(Exception):
    """Root of every error raised on purpose by the dispatcher."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a file, with its position (1-based line and column)."""

    file: str
    line: int
    col: int
    message: str
    rule: str = "config"

    def __str__(self) -> str:
        if not self.file:
            return self.message
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "col": self.col, "rule": self.rule, "message": self.message}


class ConfigError(DispatcherError):
    """The configuration is invalid; ``problems`` lists every finding with its place."""

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", 0, 0, problems)]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SourceError(DispatcherError):
    """The account source (the lender's database) cannot be queried."""


class TemplateError(DispatcherError):
    """A template is missing, has a syntax error, or fails to render."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        where = f"{file}:{line or 0}: " if file else ""
        super().__init__(f"{where}{message}")


class LedgerError(DispatcherError):
    """The ledger database cannot be read or written."""


class BrokerError(DispatcherError):
    """The Celery broker (``DISPATCHER_BROKER_URL``) cannot be reached: tasks cannot be enqueued."""


class DeliveryError(DispatcherError):
    """A channel could not hand a message to its provider."""

    def __init__(self, message: str, *, code: str | None = None, attempt_id: int | None = None) -> None:
        self.code = code
        self.attempt_id = attempt_id
        super().__init__(message)


class TransientDeliveryError(DeliveryError):
    """A failure worth retrying; ``retry_after`` is the provider's requested delay in seconds."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        attempt_id: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, attempt_id=attempt_id)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """A failure that retrying cannot fix (invalid number, opted out, dead token)."""
