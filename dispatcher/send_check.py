"""The checks repeated immediately before sending: what can change between plan and send.

The balance (``paid``), pauses (``pause``, those agreed at a hand-off included), opt-outs and dead addresses
(``opt-out``, ``bad-address``), the contact window and holidays are checked again
on a fresh read of the accounts and of the suppressions. Caps are not: they were
counted when the reminder was planned and the claim makes the send happen once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from dispatcher.accounts import Account, RejectedRow
from dispatcher.channel_kind import ChannelKind
from dispatcher.ladder import local_date
from dispatcher.ledger.store import Ledger
from dispatcher.pipeline.history import BatchHistory
from dispatcher.pipeline.jobs import DeliveryJob
from dispatcher.pipeline.plan import address_for
from dispatcher.pipeline.source import AccountSource
from dispatcher.rules.base import Block
from dispatcher.rules.engine import RuleEngine
from dispatcher.zones import home_zone


@dataclass
class BatchFacts:
    """Fresh accounts (by id), suppressions and pauses for one batch of jobs."""

    accounts: dict[str, Account]
    history: BatchHistory
    """What the re-check reads: suppressions and pauses, no contacts (caps are counted when planning)."""
    rechecked: bool
    read_contacts: Callable[[], BatchHistory] | None = None
    _whole: BatchHistory | None = None

    def whole_history(self) -> BatchHistory:
        """The history with contacts and claims too, read when a batch first needs it (a fallback channel, which
        was never planned, passes the caps here)."""
        if self._whole is None:
            self._whole = self.read_contacts() if self.read_contacts is not None else self.history
        return self._whole


class SendCheck:
    """Re-reads a batch's accounts and suppressions and re-runs the rules that can change."""

    def __init__(self, source: AccountSource, ledger: Ledger, engine: RuleEngine, default_zone: str,
                 contacts_since: Callable[[datetime], datetime | None]) -> None:
        self.source = source
        self.ledger = ledger
        self.engine = engine
        self.default_zone = default_zone
        self.contacts_since = contacts_since

    def facts(self, jobs: Sequence[DeliveryJob], now: datetime,
              fresh: Mapping[str, Account | RejectedRow] | None = None) -> BatchFacts:
        """The batch's accounts re-read now (or ``fresh``, read by the caller just before) and its history."""
        if fresh is None:
            ids = sorted({job.account.account_id for job in jobs})
            planned = {job.account.phone for job in jobs if job.account.phone}  # validated when planned
            fresh = self.source.fetch(ids, planned) if self.source.can_recheck else {}
        accounts = {i: a for i, a in fresh.items() if isinstance(a, Account)}
        known = list(accounts.values()) or [job.account for job in jobs]
        newest = max((job.attempt_id for job in jobs), default=0)

        def read_contacts() -> BatchHistory:  # as it stood when the batch was taken: not its own fallback tries
            history = self.ledger.load_history(known, self.contacts_since(now))
            history.forget_after(newest)
            return history

        return BatchFacts(accounts, self.ledger.load_recheck_history(known), self.source.can_recheck, read_contacts)

    def check(self, job: DeliveryJob, channel: ChannelKind, address: str, facts: BatchFacts,
              now: datetime, *, fallback: bool = False) -> Block | None:
        """Why ``job`` must not go out on ``channel`` now, or ``None``.

        A ``fallback`` channel was never planned, so it also passes the caps here.
        """
        history = facts.whole_history() if fallback else facts.history
        account = facts.accounts.get(job.account.account_id) if facts.rechecked else job.account
        if account is None:
            return Block("paid", "the account is no longer in the overdue source")
        if account.settled:
            return Block("paid", f"settled before sending (balance {account.overdue_amount})")
        block = self.engine.check_account(account, local_date(now, home_zone(account, self.default_zone)),
                                          history)
        if block is not None:
            return block
        if job.planned_address_hash is not None or address_for(account, channel) != address:
            return Block("third-party", f"the borrower's {channel.value} address changed since planning; "
                         "the next run plans it to the current one", defer=True)
        return self.engine.recheck_channel(account, channel, address, now, history, all_rules=fallback)
