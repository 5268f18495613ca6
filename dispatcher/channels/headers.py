"""Header values a channel writes (SMTP, outbox ``.eml``): a line break or control character is refused.

A borrower's name or address with ``\\r\\nBcc: x@evil`` in it would otherwise add a
header to the message. Such a message is refused as a permanent failure with the
error code :data:`UNSAFE_HEADER`; nothing is stripped, so what was checked is what
would have been sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from dispatcher.errors import PermanentDeliveryError

UNSAFE_HEADER = "unsafe_header"
"""The error code of a message refused for a control character in a header."""

_UNSAFE_VALUE = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
"""C0 controls but TAB, DEL, NEL and the Unicode line and paragraph separators."""
_HEADER_NAME = re.compile(r"[!-9;-~]+")
"""RFC 5322 field names: printable ASCII but the colon."""


class UnsafeHeaderError(PermanentDeliveryError):
    """A header name or value holds a line break or another control character; the message is never sent."""

    def __init__(self, name: str, char: str) -> None:
        super().__init__(f"header {name!r} contains U+{ord(char):04X}, which a header may not hold (a line "
                         "break would inject headers): message refused", code=UNSAFE_HEADER)
        self.header = name


def checked_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` itself, once every name and value is safe to write; raises :class:`UnsafeHeaderError`."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):  # the usual case costs one match; the culprit is looked for after
            raise UnsafeHeaderError(name, next((c for c in name if not _HEADER_NAME.fullmatch(c)), "\x00"))
        found = _UNSAFE_VALUE.search(value)
        if found:
            raise UnsafeHeaderError(name, found.group(0))
    return headers
