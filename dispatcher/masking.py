"""Masking personal data for logs, the ledger and listings."""

from __future__ import annotations

import hashlib
import logging
import re
from functools import lru_cache

_TOKEN = r"A-Za-z0-9_\-"
"""Characters of opaque identifiers (push tokens, base64url)."""

_PATTERNS = {
    # a signed unsubscribe link's token (a working credential holding the address), a JWT ("eyJ...")
    "unsubscribe": r"/unsubscribe/[A-Za-z0-9_\-.]+",
    "jwt": rf"(?<![\w\-])eyJ[{_TOKEN}]{{8,}}(?:\.[{_TOKEN}]+)+",
    # push tokens: FCM registration tokens are ~150 characters of [A-Za-z0-9_:-]; "fcm:"-style prefixed ids
    "token": rf"(?<![\w:\-])(?:(?=[{_TOKEN}:]*\d)[{_TOKEN}:]{{100,}}|(?:fcm|apns|gcm|push):[{_TOKEN}:]{{16,}})"
             r"(?![\w:\-])",
    # emails, their "@" also URL-encoded
    "email": r"(?<![\w.%+\-])[A-Za-z0-9._%+\-]+(?:@|%40)[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b",
    # international numbers: "+" (or "%2B") then 8-15 digits, separators allowed
    "plus": r"(?<![\w+%])(?:\+|%2[Bb])\d(?:(?:[ \-().]|%20){0,2}\d){7,14}(?!\d)",
    # bare numbers: 10-15 digits in one run, 11-15 in groups split by one space or dash (a date and hour
    # have 10), (212) 555-0123; never inside a word, a hex string, a decimal or a longer group of digits
    "bare": r"(?:(?<=%[0-9A-Fa-f]{2})|(?<![\w+.\-]))(?<!\d[ \-])"
            r"(?:\d{10,15}|\d(?:[ \-]?\d){10,14}|\(\d{3}\) ?\d{3}[ \-]\d{4})(?!\w|[.,]\d|[ \-]\d)",
}
_PERSONAL_RE = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in _PATTERNS.items()))
"""Personal data in free text, one named alternative per kind, tried in this order; see :func:`mask_text`."""


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
    """The masked form of an address on ``channel`` (sms and voice: a phone number, email, push)."""
    if channel in ("sms", "voice"):
        return mask_phone(address)
    if channel == "email":
        return mask_email(address)
    return mask_token(address)


def mask_url(url: str) -> str:
    """A connection URL without its password: ``redis://:secret@host`` → ``redis://:***@host``."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def mask_text(text: str) -> str:
    """Masks the personal data found in free text: phone numbers, emails, push tokens, unsubscribe tokens.

    Numbers are recognised with or without ``+`` (also URL-encoded ``%2B``), compact
    or split by spaces, dashes or brackets, ``00``-prefixed; a bare number needs 10-15
    digits in one run (11-15 when split), not inside a word, a hex string, a decimal
    or a longer group, so dates, times, amounts, ids and hashes stay readable. Emails
    match with ``@`` or ``%40``. Push tokens are runs of 100 or more token characters
    (FCM registration tokens) or ``fcm:``-style prefixed ids; a 64-character hex
    APNs token is indistinguishable from a SHA-256 and is left alone.
    """
    if len(text) < 8:
        return text
    return _PERSONAL_RE.sub(_masked, text)


def _masked(match: re.Match[str]) -> str:
    kind, found = match.lastgroup, match.group(0)
    if kind == "email":
        local, at, domain = re.split(r"(@|%40)", found, maxsplit=1)
        return f"{local[:1]}***{at}{domain}"
    if kind in ("plus", "bare"):
        prefix = ("+" if found.startswith("+") else found[:3]) if kind == "plus" else ""
        number = found[len(prefix):].replace("%20", " ")
        return prefix + _masked_digits("".join(c for c in number if c.isdigit()))
    if kind == "token":
        return mask_token(found)
    if kind == "unsubscribe":
        return "/unsubscribe/***"
    return "***"


def _masked_digits(digits: str) -> str:
    """The digits of a number masked as :func:`mask_phone` masks an E.164 number (its ``+`` aside)."""
    return mask_phone("+" + digits)[1:]


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
