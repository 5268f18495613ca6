"""A fast writer of ``.eml`` files for the outbox.

The standard library's ``EmailMessage`` costs over a millisecond per message,
which would make writing the outbox the slowest step of a run. This writes the
same MIME structure directly: headers (RFC 2047 encoded when not ASCII), a
multipart/alternative body with a text and an HTML part that stay readable in an
editor: UTF-8 as written (``8bit``, or ``7bit`` when ASCII) in MIME's canonical
CRLF form, quoted-printable when a line is longer than RFC 5322 allows or starts
like the boundary; never base64. Any mail client opens the result; the SMTP
channel still builds messages with ``EmailMessage``.
"""

from __future__ import annotations

import binascii
from datetime import datetime
from email.header import Header
from email.utils import format_datetime

from dispatcher.channels.base import Message
from dispatcher.channels.headers import checked_headers
from dispatcher.channels.smtp_email import message_id

MAX_LINE_OCTETS = 998
"""The longest line RFC 5322 allows (CRLF not counted): a part with a longer one is sent quoted-printable."""

_CRLF = "\r\n"


def _header(value: str) -> str:
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep=_CRLF)


def _canonical(text: str) -> bytes:
    """``text`` in UTF-8 with CRLF line ends, plus the CRLF the boundary delimiter after it takes back."""
    return (text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", _CRLF) + _CRLF).encode("utf-8")


def _encoded(text: str, delimiter: bytes) -> tuple[str, bytes]:
    """The transfer encoding and body of one text part: as written when it can be, else quoted-printable.

    Quoted-printable never holds ``=_`` (``=`` is followed by hex digits or a line
    break), so it cannot hold the boundary either.
    """
    data = _canonical(text)
    longest = max(map(len, data.split(b"\r\n")))
    if longest <= MAX_LINE_OCTETS and b"\r\n" + delimiter not in b"\r\n" + data:
        return ("7bit" if data.isascii() else "8bit"), data
    return "quoted-printable", binascii.b2a_qp(data)


def _part(content_type: str, text: str, delimiter: bytes) -> bytes:
    cte, body = _encoded(text, delimiter)
    head = f'Content-Type: {content_type}; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {cte}{_CRLF}{_CRLF}'
    return head.encode("ascii") + body


def eml_bytes(message: Message, sender: str, date: datetime) -> bytes:
    """The whole message, CRLF line ends, ready to be written to a ``.eml`` file.

    Raises :class:`~dispatcher.channels.headers.UnsafeHeaderError` for a header
    holding a line break or another control character.
    """
    boundary = f"=_reminder_{message.attempt_id}"  # "=_" never occurs in quoted-printable
    headers = checked_headers({
        "From": sender,
        "To": message.to,
        "Subject": message.subject or "",
        "Date": format_datetime(date),
        "Message-ID": message_id(message, sender),
        "MIME-Version": "1.0",
        **message.headers,
    })
    encoded = ("Subject", *message.headers)  # From and To are written as they are, as before
    lines = [f"{name}: {_header(value) if name in encoded else value}" for name, value in headers.items()]
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    delimiter = f"--{boundary}".encode("ascii")
    parts = [_part("text/plain", message.body, delimiter)]
    if message.html is not None:
        parts.append(_part("text/html", message.html, delimiter))
    body = b"".join(delimiter + b"\r\n" + part for part in parts) + delimiter + b"--\r\n"
    return (_CRLF.join(lines) + _CRLF + _CRLF).encode("ascii") + body
