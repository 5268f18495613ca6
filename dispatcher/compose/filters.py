"""Jinja2 filters for reminder templates: money, dates and masked numbers.

The plain functions (:func:`money`, :func:`localdate`, :func:`mask`) take every
argument explicitly. The repayment account (where the borrower pays) is printed in
full; :func:`mask` is for numbers the borrower should only recognise (their own card
or ID number). The ``*_filter`` variants are what templates see: they read
``currency`` and ``locale`` from the template context, so a template writes
``{{ amount|money }}`` and ``{{ deadline|localdate }}``.

Locale tags use the schedule's spelling (``zh-CN``); Babel ``Locale`` objects
and formatted values are cached because rendering is a hot path.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from functools import lru_cache

from babel import Locale
from babel.dates import format_date
from babel.numbers import format_currency
from jinja2 import pass_context
from jinja2.runtime import Context

DEFAULT_MASK_KEEP = 4
"""Characters of an account number left visible by :func:`mask`."""

MASK = "****"
"""What replaces the hidden part of an account number."""

_SEPARATORS = re.compile(r"[\s\-]")
_URL_PREFIXES = ("http://", "https://")


@lru_cache(maxsize=256)
def babel_locale(tag: str) -> Locale:
    """The Babel ``Locale`` for a tag like ``zh-CN`` or ``en_US`` (cached)."""
    return Locale.parse(tag.replace("-", "_"))


@lru_cache(maxsize=65_536)
def money(amount: Decimal, currency: str, locale: str) -> str:
    """``amount`` in ``currency`` as written in ``locale``: ``¥1,234.50``, ``$1,234.50``."""
    return str(format_currency(amount, currency, locale=babel_locale(locale)))


@lru_cache(maxsize=4_096)
def localdate(d: date, locale: str, fmt: str = "long") -> str:
    """``d`` as written in ``locale``: ``2026年12月1日``, ``December 1, 2026``."""
    return str(format_date(d, format=fmt, locale=babel_locale(locale)))


def mask(value: str, keep: int = DEFAULT_MASK_KEEP) -> str:
    """Hide all but the last ``keep`` characters of an account or card number.

    ``6222 0212 3456 6789`` → ``**** 6789``, ``6222021234566789`` → ``****6789``.
    A value no longer than ``keep`` is hidden entirely; a payment link
    (``http://`` or ``https://``) is returned unchanged.
    """
    text = value.strip()
    if text.lower().startswith(_URL_PREFIXES):
        return text
    compact = _SEPARATORS.sub("", text)
    if keep <= 0 or len(compact) <= keep:
        return MASK
    gap = " " if _SEPARATORS.search(text) else ""
    return f"{MASK}{gap}{compact[-keep:]}"


@pass_context
def money_filter(
    context: Context, amount: Decimal, currency: str | None = None, locale: str | None = None
) -> str:
    """``{{ amount|money }}``: currency and locale default to the context's."""
    return money(amount, currency or context["currency"], locale or context["locale"])


@pass_context
def localdate_filter(context: Context, d: date, fmt: str = "long", locale: str | None = None) -> str:
    """``{{ deadline|localdate }}`` or ``{{ deadline|localdate("short") }}`` in the context's locale."""
    return localdate(d, locale or context["locale"], fmt)


FILTERS = {"money": money_filter, "localdate": localdate_filter, "mask": mask}
"""The filters registered on the template environment, by name."""
