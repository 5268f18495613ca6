"""A delivery job: one planned attempt, with what the deliverer needs to render and send it.

In the daemon's process, jobs go from booking straight to the deliverer. Through
Celery only their attempt ids travel; a worker rebuilds the jobs from the ledger
and the source (:mod:`dispatcher.pipeline.job_loader`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.records import record


@record
class DeliveryJob:
    """Send ``channel`` of reminder ``reminder_key``; ``fallbacks`` are the step's later channels."""

    attempt_id: int
    try_no: int
    reminder_key: str
    account: Account
    step: str
    occurrence: int
    days_overdue: int
    local_today: date
    channel: ChannelKind
    address: str
    fallbacks: tuple[ChannelKind, ...] = ()
    parent_id: int | None = None
    run_id: int | None = None
    planned_address_hash: str | None = None  # set when the address re-read differs from the one planned


COUNT_NAMES = ("accounts", "rejected", "planned", "sent", "failed", "suppressed", "deferred", "unknown", "pending",
               "held", "in_doubt", "suppressed_at_send", "deferred_at_send", "skipped")
"""The counts of a run, in the order they are stored."""


@dataclass(slots=True)
class RunCounts:
    """What a run did, by outcome (stored as JSON on the run row).

    ``planned`` counts the attempts the run booked to send; each ends as exactly
    one of ``sent``, ``failed``, ``suppressed_at_send`` (held back by the re-check
    just before sending), ``deferred_at_send`` (given back for a later moment),
    ``unknown`` (handed over, the provider cannot say) or ``pending`` (not settled
    when the run ended), following retries and fallback channels. ``held`` is the
    part of ``pending`` waiting for a template that renders, ``in_doubt`` the part
    handed over whose outcome is asked at reconciliation, the rest was left
    ``planned`` (a stop, a next try). ``suppressed`` and ``deferred`` also count
    what planning decided not to send. ``skipped``: accounts with nothing new to
    book, or jobs someone else had claimed.
    """

    accounts: int = 0
    rejected: int = 0
    planned: int = 0
    sent: int = 0
    failed: int = 0
    suppressed: int = 0
    deferred: int = 0
    unknown: int = 0
    pending: int = 0
    held: int = 0
    in_doubt: int = 0
    suppressed_at_send: int = 0
    deferred_at_send: int = 0
    skipped: int = 0

    def add(self, other: RunCounts) -> None:
        for name in COUNT_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return dict(asdict(self))
