"""Booking: turns a batch of decisions into ledger rows and delivery jobs.

Every due reminder gets a ``reminders`` row; every channel verdict that is not
"already done" gets an ``attempts`` row: ``planned`` (to send, try 1: the claim),
``suppressed`` (try 1: consumes the claim, with the rule id) or ``deferred``
(try 0: a decision only). The planned first tries of the batch become jobs,
and a job is only sent by whoever moves it ``planned → sending``
(:meth:`dispatcher.ledger.store.Ledger.start_sending`), so a plan booked twice
(two daemons, a retried run) is sent once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dispatcher.decisions import ChannelPlan, Decision, Reason, Verdict
from dispatcher.ledger.store import Ledger
from dispatcher.masking import address_hash, mask_address
from dispatcher.pipeline.history import Deferred, borrower_key
from dispatcher.pipeline.jobs import DeliveryJob, RunCounts


def _attempt_row(decision: Decision, plan: ChannelPlan, status: str, try_no: int,
                 run_id: int | None, now: datetime) -> dict[str, Any]:
    assert decision.step is not None and decision.reminder_key is not None
    return {
        "reminder_key": decision.reminder_key,
        "account_id": decision.account_id,
        "step": decision.step.step,
        "occurrence": decision.occurrence,
        "channel": plan.channel.value,
        "try_no": try_no,
        "status": status,
        "address": mask_address(plan.channel.value, plan.address) if plan.address else None,
        "address_hash": address_hash(plan.address) if plan.address else None,
        "borrower_hash": borrower_key(decision.account) if decision.account else None,
        "variant": decision.step.variant_for(decision.account_id),
        "rule_id": plan.rule_id,
        "detail": plan.detail,
        "not_before": plan.not_before,
        "run_id": run_id,
        "created_at": now,
        "updated_at": now,
    }


def _superseded_row(decision: Decision, deferred: Deferred, newer: str, run_id: int | None,
                    now: datetime) -> dict[str, Any]:
    return {
        "reminder_key": deferred.reminder_key, "account_id": decision.account_id, "step": deferred.step,
        "occurrence": deferred.occurrence, "channel": deferred.channel, "try_no": 1, "status": "suppressed",
        "address": None, "address_hash": None, "borrower_hash": None, "variant": None,
        "rule_id": Reason.SUPERSEDED.value,
        "detail": f"deferred, then replaced by the newer reminder {newer}", "not_before": None,
        "run_id": run_id, "created_at": now, "updated_at": now,
    }


def _released_row(decision: Decision, booked: Deferred, run_id: int | None, now: datetime) -> dict[str, Any]:
    """A channel booked by an earlier run for an account settled since: it takes that claim (``Ledger.book``)."""
    return {**_superseded_row(decision, booked, "", run_id, now), "rule_id": Reason.SETTLED.value,
            "detail": f"booked, then the account was settled before sending ({decision.detail})"}


def _reminder_row(decision: Decision, run_id: int | None, now: datetime) -> dict[str, Any]:
    assert decision.account is not None and decision.step is not None
    return {"key": decision.reminder_key, "account_id": decision.account_id,
            "due_date": decision.account.due_date, "step": decision.step.step,
            "occurrence": decision.occurrence, "run_id": run_id, "created_at": now, "bucket": decision.step.bucket}


_ROW_FOR = {Verdict.SEND: ("planned", 1), Verdict.SUPPRESS: ("suppressed", 1), Verdict.DEFER: ("deferred", 0),
            Verdict.HOLD: ("suppressed", 0)}


class Booker:
    """Writes a batch's decisions to the ledger and returns the jobs it now owns."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def book(self, decisions: Sequence[Decision], run_id: int | None,
             now: datetime) -> tuple[list[DeliveryJob], RunCounts]:
        counts = RunCounts(accounts=len(decisions))
        reminder_rows: list[dict[str, Any]] = []
        claim_rows: list[dict[str, Any]] = []
        decision_rows: list[dict[str, Any]] = []
        for decision in decisions:
            claim_rows.extend(_superseded_row(decision, d, newer, run_id, now) for d, newer in decision.superseded)
            claim_rows.extend(_released_row(decision, d, run_id, now) for d in decision.released)
            counts.deferred += sum(1 for plan in decision.channels if plan.verdict is Verdict.DEFER)
            rows = [(plan, _ROW_FOR[plan.verdict]) for plan in decision.channels
                    if plan.verdict in _ROW_FOR and not plan.recorded]
            if not rows:
                counts.skipped += 1
                continue
            reminder_rows.append(_reminder_row(decision, run_id, now))
            for plan, (status, try_no) in rows:
                row = _attempt_row(decision, plan, status, try_no, run_id, now)
                (claim_rows if try_no else decision_rows).append(row)
        claimed = self.ledger.book(claim_rows, reminder_rows, decision_rows)
        self.ledger.defer_claims([(decision.reminder_key or "", plan.channel.value, plan.rule_id)
                                  for decision in decisions for plan in decision.channels
                                  if plan.verdict in (Verdict.DEFER, Verdict.HOLD) and plan.status == "planned"],
                                 run_id, now)
        self.ledger.supersede([(d.reminder_key, d.channel, newer) for decision in decisions
                               for d, newer in decision.superseded])
        jobs = self._jobs(decisions, claimed, run_id)
        counts.suppressed = sum(1 for r in [*claim_rows, *decision_rows] if r["status"] == "suppressed")
        counts.planned = len(jobs)
        return jobs, counts

    @staticmethod
    def _jobs(decisions: Sequence[Decision], claimed: dict[tuple[str, str], tuple[int, int]],
              run_id: int | None) -> list[DeliveryJob]:
        jobs: list[DeliveryJob] = []
        for decision in decisions:
            for plan in decision.sends:
                booked = claimed.get((decision.reminder_key or "", plan.channel.value))
                if booked is None:
                    continue
                attempt_id, try_no = booked
                assert decision.account and decision.step and decision.local_today and plan.address
                jobs.append(DeliveryJob(
                    attempt_id=attempt_id, try_no=try_no, reminder_key=decision.reminder_key or "",
                    account=decision.account, step=decision.step.step, occurrence=decision.occurrence or 0,
                    days_overdue=decision.days_overdue or 0, local_today=decision.local_today,
                    channel=plan.channel, address=plan.address,
                    fallbacks=tuple(p.channel for p in decision.fallbacks_after(plan.channel)),
                    run_id=run_id,
                ))
        return jobs
