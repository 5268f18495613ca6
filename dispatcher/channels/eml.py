"""A fast writer of ``.eml`` files for the outbox.

The standard library's ``EmailMessage`` costs over a millisecond per message,
which would make writing the outbox the slowest step of a run. This writes the
same MIME structure directly: headers (RFC 2047 encoded when not ASCII), a
multipart/alternative body with base64 text and HTML parts. Any mail client
opens the result; the SMTP channel still builds messages with ``EmailMessage``.
"""

from __future__ import annotations

import base64
from datetime import datetime
from email.header import Header
from email.utils import format_datetime

from dispatcher.channels.base import Message
from dispatcher.channels.headers import checked_headers
from dispatcher.channels.smtp_email import message_id

_CRLF = "\r\n"


def _header(value: str) -> str:
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep=_CRLF)


def _part(content_type: str, text: str) -> str:
    encoded = base64.encodebytes(text.encode("utf-8")).decode("ascii").replace("\n", _CRLF)
    return (f'Content-Type: {content_type}; charset="utf-8"{_CRLF}'
            f"Content-Transfer-Encoding: base64{_CRLF}{_CRLF}{encoded}")


def eml_bytes(message: Message, sender: str, date: datetime) -> bytes:
    """The whole message, CRLF line ends, ready to be written to a ``.eml`` file.

    Raises :class:`~dispatcher.channels.headers.UnsafeHeaderError` for a header
    holding a line break or another control character.
    """
    boundary = f"=_reminder_{message.attempt_id}"  # "_" never occurs in base64, so never in a part
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
    parts = [_part("text/plain", message.body)]
    if message.html is not None:
        parts.append(_part("text/html", message.html))
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    body = "".join(f"--{boundary}{_CRLF}{part}" for part in parts) + f"--{boundary}--{_CRLF}"
    return (_CRLF.join(lines) + _CRLF + _CRLF + body).encode("ascii")
