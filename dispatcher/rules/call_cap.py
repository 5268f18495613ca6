"""``call-cap``: how often a borrower may be called, by profile.

* ``us`` (Reg F 12 CFR 1006.14(b)(2)): at most 7 call attempts per debt within 7 days, and none
  within 7 days after a telephone conversation about the debt (a person answered);
* ``cn`` (GB/T 45251-2025; China Banking Association collection guideline, 2026): at most 3
  answered calls a day and at most 6 dial attempts a day per phone number.

Calls are counted from the ledger, answered or not (busy, no answer: still attempts), plus the calls
this run has already planned. Over a limit the call is deferred until the limit frees, like ``cap``;
the contact window and the other caps apply to calls as to every channel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.masking import address_hash
from dispatcher.pipeline.history import BatchHistory, Call
from dispatcher.rules.base import Block

_VOICE = ChannelKind.VOICE.value


@dataclass(frozen=True, slots=True)
class CallLimits:
    """Call caps of one profile: over a rolling ``per``, at most ``attempts`` dials and ``answered`` answered
    calls, none within ``quiet_after_conversation`` of a conversation; per number or per debt."""

    per: timedelta
    attempts: int | None = None
    answered: int | None = None
    quiet_after_conversation: timedelta | None = None
    per_number: bool = False
    source: str = ""

    @property
    def longest(self) -> timedelta:
        """How far back calls must be read to check every limit."""
        return max(self.per, self.quiet_after_conversation or self.per)


CALL_LIMITS: dict[str, CallLimits] = {
    "us": CallLimits(per=timedelta(days=7), attempts=7, quiet_after_conversation=timedelta(days=7),
                     source="Reg F 1006.14(b)(2)"),
    "cn": CallLimits(per=timedelta(days=1), attempts=6, answered=3, per_number=True,
                     source="GB/T 45251-2025; CBA collection guideline 2026"),
}
"""The call caps of each profile (``none`` has none)."""


def _days(span: timedelta) -> str:
    return f"{span.days} day(s)" if span.days and not span.seconds else f"{span.total_seconds() / 3600:g} hour(s)"


class CallCapRule:
    """Defers a call that would exceed the profile's call caps."""

    rule_id = "call-cap"

    def __init__(self, limits: CallLimits) -> None:
        self.limits = limits

    def check(self, account: Account, channel: ChannelKind, address: str, now: datetime,
              history: BatchHistory) -> Block | None:
        if channel is not ChannelKind.VOICE:
            return None
        limits = self.limits
        calls = [c for c in self._calls(account, address, history) if c.at <= now]
        scope = "this number" if limits.per_number else "this debt"
        if limits.quiet_after_conversation is not None:
            talks = [c.at for c in calls if c.conversation and c.at > now - limits.quiet_after_conversation]
            if talks:
                return Block(self.rule_id, f"a conversation on {max(talks):%Y-%m-%d %H:%M} UTC: no call to {scope} "
                             f"within {_days(limits.quiet_after_conversation)} after it ({limits.source})",
                             defer=True, not_before=max(talks) + limits.quiet_after_conversation)
        recent = [c for c in calls if c.at > now - limits.per]
        for most, counted, what in ((limits.answered, [c for c in recent if c.answered], "answered calls"),
                                    (limits.attempts, recent, "call attempts")):
            if most is not None and len(counted) >= most:
                times = sorted(c.at for c in counted)
                return Block(self.rule_id, f"{len(counted)} {what} to {scope} in the last {_days(limits.per)} "
                             f"(max {most}; {limits.source})", defer=True,
                             not_before=times[len(times) - most] + limits.per if most else None)
        return None

    def _calls(self, account: Account, address: str, history: BatchHistory) -> Iterable[Call]:
        """The calls counted for this call: to the number (``per_number``) or to the debt, recorded or planned
        in this run (the planner adds its calls as contacts)."""
        digest = address_hash(address)
        if self.limits.per_number:
            def counts(account_id: str, hashed: str | None) -> bool:
                return hashed == digest
            planned = history.by_address.get(digest, [])
        else:
            def counts(account_id: str, hashed: str | None) -> bool:
                return account_id == account.account_id
            planned = history.by_account.get(account.account_id, [])
        found = {c.attempt_id: c for c in history.calls.values() if counts(c.account_id, c.address_hash)}
        for contact in planned:
            if contact.channel == _VOICE and contact.attempt_id not in found \
                    and counts(contact.account_id, contact.address_hash):
                found[contact.attempt_id] = Call(contact.attempt_id, contact.account_id, contact.address_hash,
                                                 contact.at)
        return found.values()
