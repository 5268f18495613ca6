"""Planning a batch again after another process booked contacts of its borrowers: only the accounts those reach.

When several processes plan ranges of one run, a borrower's loans may lie in two ranges. A batch is booked
under the run's booking lock after checking that no contact of its borrowers was booked since its history was
read (:meth:`~dispatcher.pipeline.run.Runner.book_range`). When one was, the accounts whose caps could count it
are planned again on a fresh history, with every account of the batch they share an address with (the planner
counts the batch's own messages as it plans them); the other decisions stand. Planning the whole batch again
would hold the lock, and the other processes, for as long as planning it the first time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from dispatcher.accounts import Account
from dispatcher.decisions import Decision
from dispatcher.pipeline.history import BatchHistory, borrower_hashes
from dispatcher.pipeline.plan import Planner


def replan(planner: Planner, accounts: Sequence[Account], decisions: Sequence[Decision], before: BatchHistory,
           fresh: BatchHistory, now: datetime) -> tuple[list[Decision], int]:
    """``decisions`` with those of the accounts whose contacts differ between ``before`` and ``fresh`` (and of
    the accounts sharing an address with them) planned again on ``fresh`` at ``now``; and how many were."""
    changed = {a.account_id for a in accounts if _counted(before, a) != _counted(fresh, a)}
    if not changed:
        return list(decisions), 0
    group = _together(accounts, (before, fresh))
    again = {group[account_id] for account_id in changed}
    chosen = [a for a in accounts if group[a.account_id] in again]
    replanned = {d.account_id: d for d in planner.plan(chosen, fresh, now)}
    return [replanned.get(d.account_id, d) for d in decisions], len(chosen)


def _counted(history: BatchHistory, account: Account) -> frozenset[int]:
    """The booked contacts the caps count for ``account`` (not those the planner added: their ids are negative)."""
    return frozenset(c.attempt_id for c in history.contacts_of(account, per_debt=False) if c.attempt_id > 0)


def _together(accounts: Sequence[Account], histories: Iterable[BatchHistory]) -> dict[str, str]:
    """Each account's group: accounts that share an address, or whose contacts reach one another's addresses."""
    parent = {a.account_id: a.account_id for a in accounts}

    def root(account_id: str) -> str:
        while parent[account_id] != account_id:
            parent[account_id] = parent[parent[account_id]]
            account_id = parent[account_id]
        return account_id

    def join(one: str, other: str) -> None:
        parent[root(one)] = root(other)

    holder: dict[str, str] = {}
    seen = list(histories)
    for account in accounts:
        for digest in borrower_hashes(account):
            if digest in holder:
                join(account.account_id, holder[digest])
            holder[digest] = account.account_id
            for history in seen:
                for contact in history.by_address.get(digest, ()):
                    if contact.account_id in parent:
                        join(account.account_id, contact.account_id)
    return {account_id: root(account_id) for account_id in parent}
