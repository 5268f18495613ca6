"""What the planner decides for each account and channel, with the reason for every non-contact."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.pipeline.history import Deferred
from dispatcher.records import record
from dispatcher.schedule.models import Step


class Verdict(StrEnum):
    """What happens on one channel of a due reminder."""

    SEND = "send"  # claim and send now
    FALLBACK = "fallback"  # held back; sent only if an earlier channel of the step fails permanently
    DEFER = "defer"  # not now (rule); recorded, tried again by a later run
    SUPPRESS = "suppress"  # never for this occurrence (rule); recorded, consumes the claim
    HOLD = "hold"  # paused (rule); recorded once, the claim stays free for when the pause ends
    DONE = "done"  # already claimed by an earlier run


class Reason(StrEnum):
    """Why an overdue account gets nothing in this run (rule ids of issue-level reasons)."""

    BAD_DATA = "bad_data"
    SETTLED = "settled"
    NOT_YET_OVERDUE = "not_yet_overdue"
    NO_STEP_DUE = "no_step_due"
    ALREADY_SENT = "already_sent"
    ALREADY_TRIED = "already_tried"  # every channel of this occurrence was tried and none reached the borrower
    NO_ADDRESS = "no_address"
    PAUSED = "pause"
    SUPERSEDED = "superseded"


@record
class ChannelPlan:
    """The verdict for one channel of a due reminder."""

    channel: ChannelKind
    verdict: Verdict
    address: str | None
    rule_id: str | None = None
    detail: str | None = None
    not_before: datetime | None = None
    status: str | None = None  # DONE: the ledger status of the earlier try; "planned": booked, never claimed
    recorded: bool = False  # DEFER: the same deferral (rule and time) is in the ledger already


@record
class Decision:
    """The plan for one account in one run.

    ``reason`` is set when nothing is sent now on any channel: the rule id of the
    main reason, with ``detail`` in words.
    """

    account_id: str
    account: Account | None
    reason: str | None
    detail: str = ""
    step: Step | None = None
    occurrence: int | None = None
    days_overdue: int | None = None
    local_today: date | None = None
    zone: str | None = None
    reminder_key: str | None = None
    channels: tuple[ChannelPlan, ...] = ()
    superseded: tuple[tuple[Deferred, str], ...] = ()
    """Deferred reminder channels this newer reminder replaces (recorded as suppressed, ``superseded``)."""
    released: tuple[Deferred, ...] = ()
    """Channels booked by an earlier run and never claimed that will not go out: the account is settled
    (recorded as suppressed, ``settled``)."""

    @property
    def sends(self) -> tuple[ChannelPlan, ...]:
        return tuple(c for c in self.channels if c.verdict is Verdict.SEND)

    def fallbacks_after(self, channel: ChannelKind) -> tuple[ChannelPlan, ...]:
        """The held-back channels that come after ``channel`` in the step's order."""
        names = [c.channel for c in self.channels]
        later = names[names.index(channel) + 1 :] if channel in names else []
        return tuple(c for c in self.channels if c.channel in later and c.verdict is Verdict.FALLBACK)
