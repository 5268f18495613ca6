"""``pause``: do-not-contact, a dispute, a cease request, an attorney, death, bankruptcy or a promise to pay.

Any of them stops every reminder for the account. A promise to pay pauses the
ladder until its date; if the account is still overdue after it, the ladder
resumes on its own (the next run plans the step then due).
"""

from __future__ import annotations

from datetime import date

from dispatcher.accounts import Account
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
