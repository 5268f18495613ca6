"""Phone numbers parsed once per process: the row check, the zones and the holiday region share one parse."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumber


@lru_cache(maxsize=16384)
def parse(raw: str) -> PhoneNumber | str:
    """The parsed number (not to be modified: it is shared), or why ``raw`` is not a number."""
    try:
        return phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        return str(exc)


@lru_cache(maxsize=16384)
def kind(raw: str) -> int | None:
    """The number's :class:`~phonenumbers.PhoneNumberType` (``UNKNOWN``: not a valid number, as
    :func:`phonenumbers.is_valid_number` tells), or ``None`` when ``raw`` does not parse.

    Finding the type matches the number against its region's patterns, the costliest step of reading it; the row
    check (is it valid?) and the zones (is it geographic?) ask once between them.
    """
    number = parse(raw)
    return None if isinstance(number, str) else phonenumbers.number_type(number)


@lru_cache(maxsize=16384)
def region_of(raw: str) -> str | None:
    """The region (``CN``, ``US``) of an E.164 number, or ``None`` (cached: a number of a code that several
    regions share, as +1, is matched against each region's patterns)."""
    number = parse(raw)
    if isinstance(number, str):
        return None
    return phonenumbers.region_code_for_number(number) or None


def to_e164(raw: str, regions: Iterable[str | None] = ()) -> str:
    """``raw`` as E.164, read with the first of ``regions`` under which it is a valid number.

    ``8613800138007`` and ``0086 138 0013 8007`` (region CN) and ``+86 138 0013 8007`` all
    give ``+8613800138007``; digits alone are also tried with a ``+`` before them. A number
    valid under no region is returned stripped, as received: it then matches nothing.
    """
    digits = "".join(c for c in raw if c.isdigit())
    candidates: list[tuple[str, str | None]] = [(raw, r) for r in dict.fromkeys(r.upper() for r in regions if r)]
    candidates += [(raw, None), ("+" + digits.removeprefix("00"), None)]
    for text, region in candidates:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return raw.strip()
