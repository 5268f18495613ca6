"""How many SMS segments a text needs (GSM 03.38 7-bit or UCS-2).

A text made only of GSM 03.38 characters is sent as GSM-7: 160 septets in one
segment, 153 per part when concatenated; the extension characters
(``^{}\\[~]|€`` and form feed) take two septets each. Anything else is sent as
UCS-2: 70 UTF-16 code units in one segment, 67 per part. An escape pair or a
surrogate pair is never split across parts, as handsets and providers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""The GSM 03.38 basic character set (without the escape code 0x1B)."""

GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
"""GSM 03.38 extension characters: each is sent as ESC + char, two septets."""

GSM7_CHARS = GSM7_BASIC | GSM7_EXTENSION

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True, slots=True)
class Segments:
    """The encoding an SMS needs, its length in that encoding's units, and its segment count."""

    encoding: Encoding
    units: int
    segments: int


def sms_segments(text: str) -> Segments:
    """Count the encoding units and segments of ``text`` (an empty text is one segment)."""
    if set(text) <= GSM7_CHARS:
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        return _count("GSM-7", costs, GSM7_SINGLE, GSM7_PART)
    costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return _count("UCS-2", costs, UCS2_SINGLE, UCS2_PART)


def _count(encoding: Encoding, costs: list[int], single: int, part: int) -> Segments:
    units = sum(costs)
    if units <= single:
        return Segments(encoding, units, 1)
    return Segments(encoding, units, _pack(costs, part))


def _pack(costs: list[int], part: int) -> int:
    """Parts needed when characters of cost 1 or 2 fill parts of ``part`` units, none split."""
    parts, used = 1, 0
    for cost in costs:
        if used + cost > part:
            parts, used = parts + 1, 0
        used += cost
    return parts
