"""Typed, validated models of schedules.yaml.

The models check everything a single value can tell (types, formats, ranges,
cron syntax, zone names). Checks that need the whole file or other files
(overlapping windows, templates that exist and render) live in
:mod:`dispatcher.schedule.checks`.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.functional_validators import BeforeValidator
from pydantic_core import PydanticCustomError

from dispatcher.channel_kind import ChannelKind

DEFAULT_BATCH_SIZE = 1000
"""Accounts read from the source, planned and recorded per batch."""

DEFAULT_MAX_REJECT_RATIO = 0.05
"""Share of a run's source rows that may fail the account contract before the run stops and ends failed."""

DEFAULT_DEADLINE_DAYS = 3
"""Days after the run's local date shown as the pay-by date when the account has none."""

DEFAULT_SOURCE_QUERY = (
    "SELECT account_id, name, phone, email, push_token, locale, timezone, currency, "
    "overdue_amount, due_date, deadline, repayment_account, do_not_contact, dispute, "
    "promise_to_pay_until, opt_out_channels FROM demo_accounts ORDER BY account_id"
)
"""The demo table shipped in the embedded database (see ``dispatcher seed-demo``)."""

DEFAULT_RECHECK_QUERY = (
    "SELECT account_id, name, phone, email, push_token, locale, timezone, currency, "
    "overdue_amount, due_date, deadline, repayment_account, do_not_contact, dispute, "
    "promise_to_pay_until, opt_out_channels FROM demo_accounts WHERE account_id IN :ids"
)
"""Re-reads the accounts about to be contacted (fresh balance, pauses) just before sending."""

PAY_LINK_FIELDS = ("account_id", "amount", "currency", "due_date", "signature")
"""Placeholders a pay link template may use."""

_WINDOW_RE = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d*)\s*)?$")
EARLIEST_DAY = -60
"""The earliest day a step may start: reminders before the due date go back at most this far."""
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdwy])\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_CLOCK_RANGE_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_LOCALE_RE = re.compile(r"^[a-z]{2,3}(-[A-Z][a-z]{3})?(-[A-Z]{2}|-\d{3})?$")


class Strict(BaseModel):
    """Base of every model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class DayWindow:
    """Inclusive range of days overdue, ``first`` to ``last`` (``None``: open-ended)."""

    first: int
    last: int | None

    def contains(self, days: int) -> bool:
        return days >= self.first and (self.last is None or days <= self.last)

    def overlaps(self, other: DayWindow) -> bool:
        a_last = self.last if self.last is not None else 10**9
        b_last = other.last if other.last is not None else 10**9
        return self.first <= b_last and other.first <= a_last

    def __str__(self) -> str:
        if self.last is None:
            return f"{self.first}-"
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def parse_window(value: Any) -> DayWindow:
    """``3`` → day 3 only, ``1-3`` → days 1 to 3, ``15-`` → day 15 onwards; ``0`` is the due date itself
    and ``-3--1`` the three days before it (reminders before the due date)."""
    if isinstance(value, DayWindow):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("days_overdue must be a day or a range like '1-3', '15-' or '-3--1'")
    match = _WINDOW_RE.match(value)
    if not match:
        raise ValueError(f"days_overdue {value!r} is not a day or a range like '1-3', '15-' or '-3--1'")
    first = int(match.group(1))
    if match.group(2) is None:
        last: int | None = first
    else:
        last = int(match.group(2)) if match.group(2) else None
    if first < EARLIEST_DAY:
        raise ValueError(f"days_overdue starts at day {EARLIEST_DAY} at the earliest ({-EARLIEST_DAY} days "
                         "before the due date)")
    if last is not None and last < first:
        raise ValueError(f"days_overdue {value!r} ends before it starts")
    return DayWindow(first, last)


def parse_duration(value: Any) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``3d``, ``2w`` → :class:`timedelta`."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("a duration is written like '3d', '12h' or '2w'")
    match = _DURATION_RE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration like '3d', '12h' or '2w'")
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero")
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class ClockRange:
    """Allowed local times of day, ``start`` to ``end`` in minutes after midnight (end exclusive)."""

    start: int
    end: int

    def contains(self, minute_of_day: int) -> bool:
        return self.start <= minute_of_day < self.end

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


def parse_clock_range(value: Any) -> ClockRange:
    """``"08:00-21:00"`` → contact allowed from 08:00 until 21:00 local time."""
    if isinstance(value, ClockRange):
        return value
    match = _CLOCK_RANGE_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{value!r} is not a time range like '08:00-21:00'")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if m1 > 59 or m2 > 59 or start >= 24 * 60 or end > 24 * 60:
        raise ValueError(f"{value!r} is not a time range within one day (00:00-24:00)")
    if end <= start:
        raise ValueError(f"{value!r} ends before it starts (a window may not cross midnight)")
    return ClockRange(start, end)


Window = Annotated[DayWindow, BeforeValidator(parse_window)]
TimeRange = Annotated[ClockRange, BeforeValidator(parse_clock_range)]
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


def check_locale(value: str) -> str:
    if not _LOCALE_RE.match(value):
        raise ValueError(f"{value!r} is not a locale like 'zh-CN' or 'en-US'")
    return value


Zone = Annotated[str, BeforeValidator(lambda v: check_zone(v) if isinstance(v, str) else v)]
Locale = Annotated[str, BeforeValidator(lambda v: check_locale(v) if isinstance(v, str) else v)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=64)]


class Run(Strict):
    """A scheduled run: a cron expression fired in the schedule's zone (or its own)."""

    name: Name
    cron: str
    timezone: Zone | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from exc
        return value


Label = Annotated[str, Field(min_length=1, max_length=64)]


class AmountRange(Strict):
    """Overdue amounts from ``min`` (inclusive) to below ``max``, in ``currency`` (any currency when unset)."""

    min: Decimal | None = Field(default=None, ge=0)
    max: Decimal | None = Field(default=None, gt=0)
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> AmountRange:
        if self.min is None and self.max is None:
            raise ValueError("an amount range needs min, max or both")
        if self.min is not None and self.max is not None and self.max <= self.min:
            raise ValueError(f"amount max {self.max} is not above min {self.min}")
        return self


class When(Strict):
    """Conditions on an account's fields that a step applies to; every condition given must hold.

    ``product``, ``segment`` and ``risk_band`` list the values that match (optional columns of the
    account contract: an account without the column matches no list).
    """

    amount: AmountRange | None = None
    product: list[Label] | None = Field(default=None, min_length=1)
    segment: list[Label] | None = Field(default=None, min_length=1)
    risk_band: list[Label] | None = Field(default=None, min_length=1)


class Until(Strict):
    """Where an open-ended step ends: after ``occurrences`` sends, or after day ``days_overdue``."""

    occurrences: int | None = Field(default=None, ge=1, le=1000)
    days_overdue: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one(self) -> Until:
        if (self.occurrences is None) == (self.days_overdue is None):
            raise ValueError("until takes one of occurrences or days_overdue")
        return self


DEFAULT_HANDOFF_PRIORITY = 5
"""Priority of a hand-off that names none: 1 is the most urgent, 9 the least."""


class Handoff(Strict):
    """Work for people instead of a message: one work item per occurrence of the step, in ``queue``.

    ``kind`` says what the collectors do (``call``, ``visit``, ``legal``); ``priority`` orders a queue
    (1 first). See :mod:`dispatcher.channels.handoff`.
    """

    queue: Name
    priority: int = Field(default=DEFAULT_HANDOFF_PRIORITY, ge=1, le=9)
    kind: Literal["call", "visit", "legal"] = "call"


def _message_channel(value: Any) -> Any:
    """A step's ``channels`` are message channels: a hand-off to people is written ``handoff: {queue: ...}``."""
    kinds = [kind.value for kind in ChannelKind if kind is not ChannelKind.HANDOFF]
    if value in kinds:
        return value
    choices = ", ".join(repr(kind) for kind in kinds[:-1]) + f" or {kinds[-1]!r}"
    hint = " (a hand-off to people is written `handoff: {queue: NAME}`)" if value == ChannelKind.HANDOFF else ""
    raise ValueError(f"expected {choices}, got {value!r}{hint}")


MessageChannel = Annotated[ChannelKind, BeforeValidator(_message_channel)]


class Variant(Strict):
    """One template of a step's experiment, chosen for a share ``weight`` / (sum of weights) of the borrowers."""

    template: Name
    weight: int = Field(strict=True, ge=1, le=1_000_000)


def variant_bucket(step: str, account_id: str, total: int) -> int:
    """A stable number in ``[0, total)`` for (step, account): sha256, never Python's salted ``hash()``, so a
    borrower sees the same variant in every run, process and release."""
    digest = hashlib.sha256(f"{step}\0{account_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % total


class Step(Strict):
    """One rung of the escalation ladder: messages on ``channels``, or a ``handoff`` to people."""

    step: Name
    days_overdue: Window
    every: Duration | None = None
    until: Until | None = None
    handoff: Handoff | None = None  # before channels: their validator reads it
    channels: list[MessageChannel] = Field(default=None, validate_default=True)
    template: Name | None = None
    variants: list[Variant] | None = None  # an experiment: instead of `template`
    fallback: bool = False
    deadline_days: int = Field(default=DEFAULT_DEADLINE_DAYS, ge=0, le=365)
    when: When | None = None
    bucket: Name | None = None
    max_segments: int | None = Field(default=None, ge=1, le=10)

    @property
    def template_name(self) -> str:
        """The step's template; with variants, the first's (the control)."""
        if self.variants:
            return self.variants[0].template
        return self.template or self.step

    @property
    def templates(self) -> list[str]:
        """Every template the step renders: each variant's of an experiment, else its one."""
        return [v.template for v in self.variants] if self.variants else [self.template_name]

    def variant_for(self, account_id: str) -> str | None:
        """The variant (its template's name) this account is assigned, ``None`` when the step has no variants."""
        if not self.variants:
            return None
        point = variant_bucket(self.step, account_id, sum(v.weight for v in self.variants))
        for variant in self.variants:
            if point < variant.weight:
                return variant.template
            point -= variant.weight
        raise AssertionError("unreachable: the point is below the total weight")

    def template_for(self, account_id: str) -> str:
        """The template an account's message of this step is rendered with."""
        return self.variant_for(account_id) or self.template_name

    def as_variant(self, template: str) -> Step:
        """This step rendering ``template`` for everyone: how each variant's templates are checked."""
        return self.model_copy(update={"template": template, "variants": None})

    @field_validator("variants")
    @classmethod
    def _an_experiment(cls, value: list[Variant] | None, info: ValidationInfo) -> list[Variant] | None:
        """Two or more variants of distinct templates, instead of ``template``, on a step that sends messages."""
        if value is None:
            return None
        if info.data.get("template") is not None:
            raise ValueError("a step names one `template` or several `variants`, not both")
        if info.data.get("handoff") is not None:
            raise ValueError("a hand-off step has no templates to vary")
        if len(value) < 2:
            raise ValueError("an experiment needs at least 2 variants")
        names = [v.template for v in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"variant template {twice[0]!r} is listed twice")
        return value

    @property
    def every_days(self) -> int | None:
        if self.every is None:
            return None
        return max(1, self.every.days)

    @model_validator(mode="before")
    @classmethod
    def _handoff_needs_no_channels(cls, data: Any) -> Any:
        """A step written with ``handoff`` and without ``channels`` gets the marker ``()`` (YAML never makes one)."""
        if isinstance(data, dict) and "handoff" in data and "channels" not in data:
            return {**data, "channels": ()}
        return data

    @field_validator("channels", mode="before")
    @classmethod
    def _channels_or_handoff(cls, value: Any, info: ValidationInfo) -> Any:
        """At least one channel, unless the step hands off to people; never both."""
        if value is None:
            raise PydanticCustomError("missing", "Field required")
        if isinstance(value, tuple) and not value:  # the hand-off marker
            return []
        handoff = info.data.get("handoff")
        if handoff is not None and value:
            raise ValueError("a step sends messages (channels) or hands off to people (handoff), not both")
        if handoff is None and isinstance(value, list) and not value:
            raise PydanticCustomError("too_short", "List should have at least 1 item after validation, not 0",
                                      {"field_type": "List", "min_length": 1, "actual_length": 0})
        return value

    @field_validator("channels")
    @classmethod
    def _unique_channels(cls, value: list[ChannelKind]) -> list[ChannelKind]:
        if len(set(value)) != len(value):
            raise ValueError("a channel is listed twice")
        return value

    @field_validator("every")
    @classmethod
    def _whole_days(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and (value.seconds or value.microseconds or value.days < 1):
            raise ValueError("must be a whole number of days or weeks, like '3d' or '1w'")
        return value

    @model_validator(mode="after")
    def _ends(self) -> Step:
        until, window = self.until, self.days_overdue
        if until is None:
            return self
        if until.occurrences is not None and self.every is None:
            raise ValueError("until: occurrences needs `every` (a step without it is sent once)")
        if until.days_overdue is not None:
            if window.last is not None:
                raise ValueError("until: days_overdue is for an open-ended window ('15-'); this one ends on "
                                 f"day {window.last}")
            if until.days_overdue < window.first:
                raise ValueError(f"until: day {until.days_overdue} is before the window starts (day {window.first})")
        return self

    @property
    def last_day(self) -> int | None:
        """The last day of the step's window, ``until`` included (``None``: open-ended)."""
        if self.days_overdue.last is not None:
            return self.days_overdue.last
        return self.until.days_overdue if self.until is not None else None


class Cap(Strict):
    """At most ``max`` contacts per rolling ``per``, on one channel or (no channel) across all."""

    max: int = Field(ge=0, le=1000)
    per: Duration
    channel: ChannelKind | None = None


class Compliance(Strict):
    """Overrides of the profile's compliance defaults; anything left out keeps the profile's value."""

    contact_window: TimeRange | None = None
    caps: list[Cap] | None = None
    cap_scope: Literal["borrower", "debt"] | None = None
    holidays: dict[Annotated[str, Field(pattern=r"^[A-Z]{2}$")], list[date]] = Field(default_factory=dict)
    region: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    blocklist: dict[str, list[Annotated[str, Field(min_length=2)]]] = Field(default_factory=dict)
    push_generic: bool | None = None
    retention: Duration | None = None


ProviderName = Literal["twilio", "smtp", "fcm", "outbox"]


class Delivery(Strict):
    """How delivery is paced and retried (the environment says where it runs)."""

    task_batch: int = Field(default=100, ge=1, le=5000)
    max_tries: dict[ChannelKind, Annotated[int, Field(ge=1, le=20)]] = Field(default_factory=dict)
    rate_limits: dict[ProviderName, Annotated[float, Field(gt=0, le=100_000)]] = Field(default_factory=dict)


class Contacts(Strict):
    """A borrower country's own ways to reach the lender (a hotline dialable from there), overriding the locale's."""

    hotline: str | None = Field(default=None, min_length=1)
    website: str | None = Field(default=None, min_length=1)
    help_email: str | None = None


Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class Brand(Strict):
    """How the lender names itself in one locale, and how a borrower can check a message is genuine.

    ``countries`` overrides the contacts for borrowers living in a country (the account's ``country``
    column, else the phone number's region): a US borrower is given a number dialable from the US.
    """

    name: str = Field(min_length=1)
    hotline: str = Field(min_length=1)
    website: str = Field(min_length=1)
    help_email: str | None = None
    countries: dict[Country, Contacts] = Field(default_factory=dict)

    def for_country(self, country: str | None) -> Brand:
        """This brand with ``country``'s own contacts, if it has any."""
        own = self.countries.get(country) if country else None
        if own is None:
            return self
        return self.model_copy(update={k: v for k, v in own.model_dump().items() if v is not None})


class Payments(Strict):
    """The pay link shown to borrowers whose account has none of its own (the ``pay_link`` column).

    ``link`` is a URL with placeholders ``{account_id}``, ``{amount}``, ``{currency}``, ``{due_date}`` and
    ``{signature}``: an HMAC-SHA256 under ``DISPATCHER_SECRET_KEY`` of the other values, so the payment page
    can trust them.
    """

    link: Annotated[str, Field(pattern=r"^https://\S+$", max_length=512)] | None = None

    @field_validator("link")
    @classmethod
    def _placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"pay link {value!r}: {exc}") from None
        unknown = sorted(set(names) - set(PAY_LINK_FIELDS))
        if unknown:
            raise ValueError(f"pay link placeholder {{{unknown[0]}}} is not one of "
                             + ", ".join(f"{{{n}}}" for n in PAY_LINK_FIELDS))
        if "signature" not in names:
            raise ValueError("a pay link must carry {signature}, so the payment page can trust its values")
        return value


class Source(Strict):
    """Where overdue accounts come from: a SQLAlchemy URL and a query yielding the contract's columns."""

    url: str | None = None
    query: str = DEFAULT_SOURCE_QUERY
    recheck_query: str | None = DEFAULT_RECHECK_QUERY
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=100_000)
    max_reject_ratio: float = Field(default=DEFAULT_MAX_REJECT_RATIO, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _recheck_follows_the_query(cls, data: Any) -> Any:
        """A lender's own ``query`` without a ``recheck_query``: re-read through that same query, filtered by id
        (never the demo table, which a worker would otherwise read for a lender's accounts)."""
        if isinstance(data, dict) and isinstance(data.get("query"), str) and "recheck_query" not in data:
            inner = data["query"].strip().rstrip(";")
            return {**data, "recheck_query": f"SELECT * FROM ({inner}) AS source_rows WHERE account_id IN :ids"}
        return data

    @field_validator("url")
    @classmethod
    def _opens_here(cls, value: str | None) -> str | None:
        """A URL that is no database URL, or whose dialect or driver is not installed, is refused at its place in
        the file (a bad edit is refused while the last good one runs), not at the next run's first read."""
        if not value or "${" in value:  # a variable the loader could not fill: it reports that itself
            return value
        from sqlalchemy.engine import make_url  # only for a file that names a source: validate stays light
        from sqlalchemy.exc import ArgumentError

        example = "e.g. postgresql+psycopg://user@host/lender or sqlite:///lender.db"
        try:
            url = make_url(value)
        except ArgumentError:  # not repeated: what cannot be parsed cannot be masked, and may hold a password
            raise ValueError(f"this is not a database URL ({example})") from None
        try:
            url.get_dialect().import_dbapi()
        except (ArgumentError, ImportError) as exc:  # NoSuchModuleError is an ArgumentError
            raise ValueError(f"{url.drivername!r} cannot be opened here: {exc} ({example})") from None
        return value

    @field_validator("recheck_query")
    @classmethod
    def _has_ids(cls, value: str | None) -> str | None:
        if value is not None and ":ids" not in value:
            raise ValueError("recheck_query must select the accounts named by the parameter :ids")
        return value


ReplyPhrase = Annotated[str, Field(min_length=1, max_length=64)]


class Replies(Strict):
    """Reply phrases per locale added to the shipped ones (:mod:`dispatcher.replies.words`)."""

    opt_out: dict[Locale, list[ReplyPhrase]] = Field(default_factory=dict)
    opt_in: dict[Locale, list[ReplyPhrase]] = Field(default_factory=dict)

    @field_validator("opt_out", "opt_in")
    @classmethod
    def _has_words(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from dispatcher.replies.words import normalise

        for phrase in (p for phrases in value.values() for p in phrases):
            if not normalise(phrase):
                raise ValueError(f"reply phrase {phrase!r} has no letters or digits")
        return value


class Schedule(Strict):
    """The whole of schedules.yaml."""

    timezone: Zone = "Asia/Shanghai"
    locale: Locale = "zh-CN"
    locales: list[Locale] = Field(default_factory=lambda: ["zh-CN", "en-US"])
    profile: Literal["cn", "us", "none"] = "cn"
    compliance: Compliance = Field(default_factory=Compliance)
    delivery: Delivery = Field(default_factory=Delivery)
    brand: dict[Locale, Brand]
    source: Source = Field(default_factory=Source)
    runs: list[Run] = Field(min_length=1)
    ladder: list[Step] = Field(min_length=1)
    replies: Replies = Field(default_factory=Replies)
    payments: Payments = Field(default_factory=Payments)

    @model_validator(mode="after")
    def _defaults_present(self) -> Schedule:
        if self.locale not in self.locales:
            raise ValueError(f"default locale {self.locale!r} is not in locales {self.locales}")
        if self.locale not in self.brand:
            raise ValueError(f"brand has no entry for the default locale {self.locale!r}")
        return self

    def brand_for(self, locale: str) -> Brand:
        return self.brand.get(locale) or self.brand[self.locale]

    def step_named(self, name: str) -> Step | None:
        return next((s for s in self.ladder if s.step == name), None)
