"""The borrower's country and the locale that goes with it, when the account does not give one."""

from __future__ import annotations

from functools import lru_cache

from babel.core import get_global

from dispatcher import phones
from dispatcher.accounts import Account


def country_of(account: Account) -> str | None:
    """Where the borrower lives: the account's ``country`` column, else the phone number's region."""
    if account.country:
        return account.country
    return phones.region_of(account.phone) if account.phone else None


@lru_cache(maxsize=1024)
def locale_for_country(country: str | None, locales: tuple[str, ...]) -> str | None:
    """The locale of ``locales`` a borrower in ``country`` reads: one written for that country (``en-US`` for US),
    else one in the country's most spoken language (CLDR's territory data), else ``None``."""
    if not country:
        return None
    for locale in locales:
        if locale.rsplit("-", 1)[-1] == country:
            return locale
    spoken = get_global("territory_languages").get(country, {})
    for language in sorted(spoken, key=lambda name: -float(spoken[name].get("population_percent") or 0)):
        base = language.split("_", 1)[0]
        found = next((locale for locale in locales if locale.split("-", 1)[0] == base), None)
        if found is not None:
            return found
    return None


def locale_of(account: Account, locales: tuple[str, ...]) -> str | None:
    """The account's own locale, else its country's (see :func:`locale_for_country`), else ``None``."""
    return account.locale or locale_for_country(country_of(account), locales)
