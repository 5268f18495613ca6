"""The compliance policy in force: a profile's defaults with schedules.yaml's overrides applied."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from dispatcher.channel_kind import ChannelKind
from dispatcher.rules.call_cap import CALL_LIMITS, CallLimits
from dispatcher.rules.wordlists import CIVIL_BLOCKLIST, language_of
from dispatcher.schedule.models import Cap, ClockRange, Schedule

DEFAULT_RETENTION = timedelta(days=3 * 365)
"""How long ledger rows are kept before ``dispatcher purge`` may delete them (Reg F 1006.100: 3 years)."""

ALL_DAY = ClockRange(0, 24 * 60)


@dataclass(frozen=True)
class Profile:
    """Compliance defaults of one jurisdiction."""

    window: ClockRange
    caps: tuple[Cap, ...]
    scope: str
    region: str | None
    push_generic: bool


PROFILES: dict[str, Profile] = {
    # GB/T 45251-2025: no collection contact 22:00-08:00; caps counted per borrower.
    "cn": Profile(ClockRange(8 * 60, 21 * 60),
                  (Cap(max=3, per=timedelta(days=1)), Cap(max=10, per=timedelta(days=7)),
                   Cap(max=1, per=timedelta(days=1), channel=ChannelKind.SMS)),
                  "borrower", "CN", True),
    # Reg F 1006.6(b)(1)(i): 08:00-21:00 local; 1006.14(b): 7 in 7 days, counted per debt.
    "us": Profile(ClockRange(8 * 60, 21 * 60),
                  (Cap(max=7, per=timedelta(days=7)), Cap(max=1, per=timedelta(days=1), channel=ChannelKind.SMS),
                   Cap(max=1, per=timedelta(days=1), channel=ChannelKind.EMAIL)),
                  "debt", "US", True),
    # No jurisdiction's defaults: no window, no caps. Content rules still apply.
    "none": Profile(ALL_DAY, (), "borrower", None, False),
}


@dataclass(frozen=True)
class Policy:
    """Every compliance setting in force, resolved once per schedules.yaml version."""

    profile: str
    window: ClockRange
    caps: tuple[Cap, ...]
    scope: str
    region: str | None
    push_generic: bool
    retention: timedelta
    holidays: Mapping[str, frozenset[date]] = field(default_factory=dict)
    blocklist: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    call_limits: CallLimits | None = None
    """The profile's call caps (``call-cap``), ``None`` for none."""

    @property
    def per_debt(self) -> bool:
        return self.scope == "debt"

    def contacts_since(self, now: datetime) -> datetime | None:
        """From when contacts must be read to check every cap at ``now`` (None: no caps)."""
        spans = [cap.per for cap in self.caps] + ([self.call_limits.longest] if self.call_limits else [])
        longest = max(spans, default=None)
        return None if longest is None else now - longest

    def blocked_phrases(self, locale: str) -> tuple[str, ...]:
        return self.blocklist.get(language_of(locale), ())


def resolve_policy(schedule: Schedule) -> Policy:
    """The profile named in ``schedule`` with its ``compliance:`` overrides."""
    base = PROFILES[schedule.profile]
    given = schedule.compliance
    blocklist = {lang: tuple(words) for lang, words in CIVIL_BLOCKLIST.items()}
    for locale, extra in given.blocklist.items():
        lang = language_of(locale)
        blocklist[lang] = (*blocklist.get(lang, ()), *extra)
    return Policy(
        profile=schedule.profile,
        window=given.contact_window or base.window,
        caps=tuple(given.caps) if given.caps is not None else base.caps,
        scope=given.cap_scope or base.scope,
        region=given.region or base.region,
        push_generic=base.push_generic if given.push_generic is None else given.push_generic,
        retention=given.retention or DEFAULT_RETENTION,
        holidays={region: frozenset(days) for region, days in given.holidays.items()},
        blocklist=blocklist,
        call_limits=CALL_LIMITS.get(schedule.profile),
    )
