"""The planner: (accounts, schedule, ledger history, now) → decisions. No I/O, no clock.

The only state it touches is the batch's :class:`BatchHistory`, to which it adds
the contacts it plans, so caps count messages of this run too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace
from datetime import date, datetime
from zoneinfo import ZoneInfo

from dispatcher.accounts import Account, RejectedRow
from dispatcher.channel_kind import ChannelKind
from dispatcher.decisions import ChannelPlan, Decision, Reason, Verdict
from dispatcher.ladder import DueStep, days_overdue, due_step, local_date, reminder_key, why_no_step
from dispatcher.masking import address_hash
from dispatcher.pipeline.history import CONTACT_STATUSES, BatchHistory, Contact, Deferred, borrower_key, deferral_note
from dispatcher.rules.engine import RuleEngine
from dispatcher.schedule.models import Schedule, Step
from dispatcher.zones import home_zone


def address_for(account: Account, channel: ChannelKind) -> str | None:
    """The borrower's own address on ``channel``, if any (a hand-off's is the account itself)."""
    if channel is ChannelKind.HANDOFF:
        return account.account_id
    if channel is ChannelKind.SMS or channel is ChannelKind.VOICE:
        return account.phone
    if channel is ChannelKind.EMAIL:
        return account.email
    return account.push_token


def routes(step: Step) -> tuple[ChannelKind, ...]:
    """Where a reminder of ``step`` goes: its message channels, or the hand-off to people."""
    return (ChannelKind.HANDOFF,) if step.handoff is not None else tuple(step.channels)


def rejected(row: RejectedRow) -> Decision:
    return Decision(row.account_id or "?", None, Reason.BAD_DATA, f"{row.field}: {row.reason}")


class Planner:
    """Decides, for each account, which step and channels are due now and why the others are not."""

    def __init__(self, schedule: Schedule, rules: RuleEngine) -> None:
        self.schedule = schedule
        self.rules = rules
        self._provisional = itertools.count(-1, -1)

    def plan(self, accounts: Iterable[Account], history: BatchHistory, now: datetime) -> list[Decision]:
        dates: dict[ZoneInfo, date] = {}
        return [self.plan_account(a, history, now, dates) for a in accounts]

    def plan_account(self, account: Account, history: BatchHistory, now: datetime,
                     dates: dict[ZoneInfo, date] | None = None) -> Decision:
        """The decision for one account; ``dates`` caches each zone's local date at ``now``."""
        zone = home_zone(account, self.schedule.timezone)
        today = dates.get(zone) if dates is not None else None
        if today is None:
            today = local_date(now, zone)
            if dates is not None:
                dates[zone] = today
        # each outcome built once (replace() of a first draft cost a percent of a run)
        if account.settled:
            booked = tuple(Deferred(key, *_step_of(key), channel)
                           for (key, channel), status in history.claims_of(account.account_id).items()
                           if status == "planned")
            return Decision(account.account_id, account, Reason.SETTLED, f"balance {account.overdue_amount}",
                            local_today=today, zone=zone.key, released=booked)
        days = days_overdue(account.due_date, today)
        pending = self._pending(account, history)
        due, key = self._due(account, days, pending)
        if due is None or key is None:
            nothing = Reason.NOT_YET_OVERDUE if days < 1 else Reason.NO_STEP_DUE
            return Decision(account.account_id, account, nothing, why_no_step(self.schedule.ladder, days, account),
                            days_overdue=days, local_today=today, zone=zone.key)
        superseded = tuple((d, key) for d in pending if d.reminder_key != key)
        block = self.rules.check_account(account, today, history)
        if block is not None:  # recorded once per reminder and channel, like any other decision not to contact
            claims, noted = history.claims_of(account.account_id), history.noted_of(account.account_id)
            # a channel booked by an interrupted run and never claimed is held too: it waits for the pause's end
            channels = tuple(ChannelPlan(c, Verdict.HOLD, address_for(account, c), block.rule_id, block.detail,
                                         status=claims.get((key, c.value)))
                             for c in routes(due.step)
                             if claims.get((key, c.value)) in (None, "planned")
                             and (key, c.value, block.rule_id) not in noted)
            reason: str | None = block.rule_id
            detail = block.detail
        else:
            channels = self._channels(account, due, key, history, now)
            reason, detail = _summary(channels)
        return Decision(account.account_id, account, reason, detail, due.step, due.occurrence, days, today, zone.key,
                        key, channels, superseded)

    def _due(self, account: Account, days: int, pending: list[Deferred]) -> tuple[DueStep | None, str | None]:
        """The reminder due now: the ladder's, else the latest deferred one still waiting."""
        due = due_step(self.schedule.ladder, days, account)
        if due is not None:
            return due, reminder_key(account.account_id, account.due_date, due.step.step, due.occurrence)
        for deferred in reversed(pending):
            step = self.schedule.step_named(deferred.step)
            if step is not None:
                return DueStep(step, days, deferred.occurrence), deferred.reminder_key
        return None, None

    @staticmethod
    def _pending(account: Account, history: BatchHistory) -> list[Deferred]:
        """Reminders of the current delinquency still waiting: deferred and not claimed since, or booked
        (``planned``) but never sent, e.g. released at send time by the contact window."""
        claims = history.claims_of(account.account_id)
        prefix = f"{account.account_id}|{account.due_date.isoformat()}|"
        waiting = [d for d in history.deferred_of(account.account_id)
                   if d.reminder_key.startswith(prefix) and (d.reminder_key, d.channel) not in claims]
        for (key, channel), status in claims.items():
            if status == "planned" and key.startswith(prefix):
                waiting.append(Deferred(key, *_step_of(key), channel))
        return waiting

    def _channels(
        self, account: Account, due: DueStep, key: str, history: BatchHistory, now: datetime
    ) -> tuple[ChannelPlan, ...]:
        claims = history.claims_of(account.account_id)
        plans: list[ChannelPlan] = []
        chosen = False  # fallback steps: a channel has been picked (or already went out)
        for channel in routes(due.step):
            status = claims.get((key, channel.value))
            booked = status == "planned"
            if booked:  # booked by an interrupted run, never claimed: book it again
                status = None
            address = address_for(account, channel)
            if status is not None:
                plans.append(ChannelPlan(channel, Verdict.DONE, address, detail=f"already {status}", status=status))
                chosen = chosen or status in CONTACT_STATUSES
                continue
            if due.step.fallback and chosen:
                plans.append(ChannelPlan(channel, Verdict.FALLBACK, address))
                continue
            plan = self._channel(account, channel, address, now, history)
            if booked:  # a refusal now takes that claim (:meth:`~dispatcher.pipeline.book.Booker.book`)
                plan = replace(plan, status="planned")
            if plan.verdict is Verdict.DEFER and (key, channel.value, deferral_note(plan.rule_id, plan.not_before)) \
                    in history.noted_of(account.account_id):
                plan = replace(plan, recorded=True)  # the same deferral is in the ledger: not written again
            plans.append(plan)
            chosen = chosen or plan.verdict in (Verdict.SEND, Verdict.DEFER)
        return tuple(plans)

    def _channel(self, account: Account, channel: ChannelKind, address: str | None, now: datetime,
                 history: BatchHistory) -> ChannelPlan:
        if not address:
            return ChannelPlan(channel, Verdict.SUPPRESS, None, Reason.NO_ADDRESS, f"no {channel.value} address")
        block = self.rules.check_channel(account, channel, address, now, history)
        if block is None:
            if channel is not ChannelKind.HANDOFF:  # a work item is no contact: a person's outcome is, once closed
                history.add_contact(Contact(next(self._provisional), account.account_id, channel.value,
                                            address_hash(address), now, borrower_key(account)))
            return ChannelPlan(channel, Verdict.SEND, address)
        verdict = Verdict.DEFER if block.defer else Verdict.SUPPRESS
        return ChannelPlan(channel, verdict, address, block.rule_id, block.detail, block.not_before)


def _summary(channels: tuple[ChannelPlan, ...]) -> tuple[str | None, str]:
    if any(c.verdict is Verdict.SEND for c in channels):
        return None, ""
    if all(c.verdict in (Verdict.DONE, Verdict.FALLBACK) for c in channels):
        detail = "; ".join(f"{c.channel.value} {c.detail}" for c in channels if c.detail)
        went_out = any(c.status in CONTACT_STATUSES for c in channels)
        return (Reason.ALREADY_SENT if went_out else Reason.ALREADY_TRIED), detail
    first = next((c for c in channels if c.verdict is Verdict.DEFER), None) or next(
        c for c in channels if c.verdict is Verdict.SUPPRESS)
    details = "; ".join(f"{c.channel.value}: {c.detail}" for c in channels if c.verdict is not Verdict.FALLBACK)
    return first.rule_id, details


def _step_of(key: str) -> tuple[str, int]:
    """The step and occurrence of a reminder key (``account|due date|step|occurrence``)."""
    step, occurrence = key.rsplit("|", 2)[1:]
    return step, int(occurrence)
