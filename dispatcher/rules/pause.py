"""``pause``: do-not-contact, a dispute, a cease request, an attorney, death, bankruptcy or a promise to pay.

Any of them stops every reminder for the account. A promise to pay pauses the
ladder until its date; if the account is still overdue after it, the ladder
resumes on its own (the next run plans the step then due). The same holds for a
promise or a dispute a collector recorded when closing a hand-off
(:class:`HandoffPauseRule`, from the ledger's history).
"""

from __future__ import annotations

from datetime import date

from dispatcher.accounts import Account
from dispatcher.pipeline.history import BatchHistory
from dispatcher.rules.base import Block

_FLAG_WORDS = {"cease_request": "the borrower asked us to stop contacting them",
               "attorney": "the borrower is represented by an attorney",
               "deceased": "the borrower is deceased", "bankruptcy": "the borrower is in bankruptcy"}


class PauseRule:
    """Blocks every reminder of a paused account."""

    rule_id = "pause"

    def check(self, account: Account, today: date) -> Block | None:
        if account.do_not_contact:
            return Block(self.rule_id, f"do not contact: {account.do_not_contact}")
        if account.dispute:
            return Block(self.rule_id, "the borrower disputes the debt")
        for flag in sorted(account.pause_flags):
            return Block(self.rule_id, _FLAG_WORDS.get(flag, flag))
        if account.promise_to_pay_until is not None and today <= account.promise_to_pay_until:
            return Block(self.rule_id, f"promise to pay until {account.promise_to_pay_until.isoformat()}")
        return None


class HandoffPauseRule:
    """Blocks every reminder while a promise to pay or a dispute recorded at a hand-off holds.

    A promise holds up to and including its date; a dispute until its date if it has one, else for the
    delinquency it was recorded in (the account's due date then); a repayment plan up to its last instalment's
    day while no instalment is missed (:meth:`~dispatcher.handoffs.repayment_plans.RepaymentPlan.holds`).
    """

    rule_id = "pause"

    def check(self, account: Account, today: date, history: BatchHistory) -> Block | None:
        for hold in history.holds_of(account.account_id):
            if hold.until is not None and today > hold.until:
                continue
            where = f"hand-off #{hold.handoff_id}"
            if hold.reason == "repayment_plan" and hold.plan is not None:
                if hold.plan.holds(account.overdue_amount, today):
                    return Block(self.rule_id, f"{hold.plan.explain(account.overdue_amount, today)} ({where})")
                continue  # broken: the ladder resumes
            if hold.reason == "promise_to_pay" and hold.until is not None:
                return Block(self.rule_id, f"promise to pay until {hold.until.isoformat()} ({where})")
            if hold.reason == "dispute" and hold.due_date in (None, account.due_date):
                until = f" until {hold.until.isoformat()}" if hold.until is not None else ""
                return Block(self.rule_id, f"the borrower disputes the debt{until} ({where})")
        return None
