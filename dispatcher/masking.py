"""Masking personal data for logs, the ledger and listings."""

from __future__ import annotations

import hashlib
import logging
import re
from functools import lru_cache

_PHONE_RE = re.compile(r"(?<![\w+])\+\d(?:[ \-().]{0,2}\d){7,14}\b")
_EMAIL_RE = re.compile(r"\b([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")


def mask_phone(phone: str) -> str:
    """``+8613812348000`` → ``+86138****8000``: country code and prefix, then the last 4 digits."""
    if len(phone) <= 8:
        return "*" * len(phone)
    return phone[: min(6, len(phone) - 8)] + "****" + phone[-4:]


def mask_email(email: str) -> str:
    """``zhang.wei@example.com`` → ``z***@example.com``."""
    local, sep, domain = email.partition("@")
    if not sep:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_token(token: str) -> str:
    """A push token shows its last 6 characters only."""
    return "…" + token[-6:] if len(token) > 6 else "***"


@lru_cache(maxsize=8192)
def address_hash(address: str) -> str:
    """A stable pseudonym of a full address (sha256 hex), to match a number without storing it."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def mask_address(channel: str, address: str) -> str:
    """The masked form of an address on ``channel`` (sms, email, push)."""
    if channel == "sms":
        return mask_phone(address)
    if channel == "email":
        return mask_email(address)
    return mask_token(address)


def mask_url(url: str) -> str:
    """A connection URL without its password: ``redis://:secret@host`` → ``redis://:***@host``."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def mask_text(text: str) -> str:
    """Masks every phone number and email address found in free text."""
    text = _PHONE_RE.sub(lambda m: mask_phone("+" + "".join(c for c in m.group(0) if c.isdigit())), text)
    return _EMAIL_RE.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


def mask_record(record: logging.LogRecord) -> logging.LogRecord:
    """Replace the record's message by its masked form (phones, emails), once."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):  # a malformed call: leave it to the logging module to report
        return record
    masked = mask_text(message)
    if masked != message:
        record.msg = masked
        record.args = None
    return record


class MaskingFilter(logging.Filter):
    """A logging filter that masks phone numbers and emails in every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


class MaskingFormatter(logging.Formatter):
    """Masks the whole formatted line, tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(super().format(record))


def install_record_masking() -> None:
    """Mask every log record as it is created, whoever handles it (our handler, pytest's, a library's)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "masks_personal_data", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        return mask_record(previous(*args, **kwargs))

    factory.masks_personal_data = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
