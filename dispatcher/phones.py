"""Phone numbers parsed once per process: the row check, the zones and the holiday region share one parse."""

from __future__ import annotations

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
