"""The borrower's zone: the account's own, else the phone number's region, else the default."""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo

from phonenumbers import PhoneNumberType, is_number_type_geographical
from phonenumbers import timezone as phone_timezone

from dispatcher import phones
from dispatcher.accounts import Account


@lru_cache(maxsize=16384)
def _phone_zones(phone: str) -> tuple[str, ...]:
    number, kind = phones.parse(phone), phones.kind(phone)
    if isinstance(number, str) or kind is None or kind == PhoneNumberType.UNKNOWN:
        return ()
    code = number.country_code
    if code is not None and is_number_type_geographical(kind, code):  # time_zones_for_number, its type known
        zones = phone_timezone.time_zones_for_geographical_number(number)
    else:
        zones = phone_timezone.time_zones_for_number(number)
    return tuple(z for z in zones if z != "Etc/Unknown")


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """A cached :class:`ZoneInfo`."""
    return ZoneInfo(name)


def candidate_zones(account: Account, default: str) -> tuple[str, ...]:
    """Every zone the borrower may be in, the most likely first.

    The account's ``timezone`` comes first; the zones of the phone number's region
    follow (a borrower may have moved); with neither, the schedule's default.
    The contact window must hold in every one of them.
    """
    return _candidates(account.timezone, account.phone, default)


@lru_cache(maxsize=16384)
def _candidates(own: str | None, phone: str | None, default: str) -> tuple[str, ...]:
    zones: list[str] = []
    if own:
        zones.append(own)
    if phone:
        zones.extend(z for z in _phone_zones(phone) if z not in zones)
    return tuple(zones) if zones else (default,)


def home_zone(account: Account, default: str) -> ZoneInfo:
    """The zone used to count the borrower's local date.

    The account's own zone, else the phone region's when it has exactly one, else the default.
    """
    if account.timezone:
        return zone(account.timezone)
    phone_zones = _phone_zones(account.phone) if account.phone else ()
    if len(phone_zones) == 1:
        return zone(phone_zones[0])
    return zone(default)  # no zone, or a region spanning several: the date is counted in the default zone
