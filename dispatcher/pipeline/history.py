"""What the ledger knows about a batch of borrowers, loaded in a few queries per batch.

The planner and the rules read it; they never query the ledger per account.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache

from dispatcher.accounts import Account
from dispatcher.handoffs.repayment_plans import RepaymentPlan
from dispatcher.masking import address_hash
from dispatcher.records import record

CONTACT_STATUSES = frozenset({"claimed", "sending", "sent", "delivered", "unknown"})
"""Attempt statuses meaning the message reached, or may have reached, the borrower (what caps count)."""

Claims = Mapping[tuple[str, str], str]
"""(reminder_key, channel) → status of the latest claimed try, for one account."""


@record
class Contact:
    """One message that reached, or may have reached, a borrower."""

    attempt_id: int
    account_id: str
    channel: str
    address_hash: str | None
    at: datetime
    borrower_hash: str | None = None


@record
class Deferred:
    """A channel of a reminder that a rule deferred, waiting for a later run."""

    reminder_key: str
    step: str
    occurrence: int
    channel: str


@record
class Suppression:
    """A channel address that must not be used (opt-out, bad number, dead token)."""

    channel: str
    address_hash: str
    source: str
    since: datetime


@record
class Hold:
    """A pause agreed with people at a hand-off: a promise to pay until ``until``, a dispute, or a repayment plan
    (until its last instalment, while kept).

    A dispute without ``until`` holds for the delinquency of ``due_date`` (a new due date starts afresh).
    """

    handoff_id: int
    reason: str  # promise_to_pay | dispute | repayment_plan
    until: date | None
    due_date: date | None
    plan: RepaymentPlan | None = None  # a repayment_plan's instalments


@record
class Call:
    """A call placed to a borrower, answered or not (what the call caps count; see :mod:`dispatcher.rules.call_cap`).

    ``answered``: the call connected (Twilio ``completed``); ``conversation``: a person (or nobody
    the machine detection could tell) took it, not an answering machine.
    """

    attempt_id: int
    account_id: str
    address_hash: str | None
    at: datetime
    answered: bool = False
    conversation: bool = False


@dataclass
class BatchHistory:
    """Claims, recent contacts and active suppressions for the accounts of one batch."""

    claims: dict[str, dict[tuple[str, str], str]] = field(default_factory=dict)
    suppressions: dict[tuple[str, str], Suppression] = field(default_factory=dict)
    by_account: dict[str, list[Contact]] = field(default_factory=dict)
    by_address: dict[str, list[Contact]] = field(default_factory=dict)
    deferred: dict[str, list[Deferred]] = field(default_factory=dict)
    noted: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)
    """Decisions already recorded without a claim: (reminder_key, channel, rule id), per account."""
    holds: dict[str, list[Hold]] = field(default_factory=dict)
    """Pauses agreed at hand-offs, newest first, per account."""
    calls: dict[int, Call] = field(default_factory=dict)
    """Calls placed to the batch's accounts and numbers since the contacts' start, by attempt id."""

    def add_contact(self, contact: Contact) -> None:
        self.by_account.setdefault(contact.account_id, []).append(contact)
        for digest in {contact.address_hash, contact.borrower_hash} - {None}:
            assert digest is not None
            self.by_address.setdefault(digest, []).append(contact)

    def forget_after(self, attempt_id: int) -> None:
        """Forget the contacts and calls booked after attempt ``attempt_id``: the history as it stood before a
        later read (a person's contacts at hand-offs, which have negative ids, stay)."""
        self.by_account = {key: [c for c in found if c.attempt_id <= attempt_id]
                           for key, found in self.by_account.items()}
        self.by_address = {key: [c for c in found if c.attempt_id <= attempt_id]
                           for key, found in self.by_address.items()}
        self.calls = {key: call for key, call in self.calls.items() if key <= attempt_id}

    def claims_of(self, account_id: str) -> Claims:
        return self.claims.get(account_id, {})

    def noted_of(self, account_id: str) -> set[tuple[str, str, str]]:
        return self.noted.get(account_id, set())

    def holds_of(self, account_id: str) -> list[Hold]:
        """Pauses agreed at the account's hand-offs, newest first."""
        return self.holds.get(account_id, [])

    def deferred_of(self, account_id: str) -> list[Deferred]:
        """Deferred reminder channels of the account, oldest first."""
        return self.deferred.get(account_id, [])

    def suppression(self, channel: str, address: str) -> Suppression | None:
        return self.suppressions.get((channel, address_hash(address)))

    def contacts_of(self, account: Account, *, per_debt: bool) -> list[Contact]:
        """Contacts counted against ``account``: its own (per debt), or per borrower also those of every
        account that shares one of its addresses (the same person's other loans), on any address."""
        own = self.by_account.get(account.account_id, [])
        if per_debt:
            return list(own)
        accounts = {account.account_id}
        for digest in borrower_hashes(account):
            accounts.update(c.account_id for c in self.by_address.get(digest, []))
        found = {c.attempt_id: c for acc in accounts for c in self.by_account.get(acc, [])}
        for digest in borrower_hashes(account):  # this run's contacts to the same addresses
            found.update((c.attempt_id, c) for c in self.by_address.get(digest, []))
        return list(found.values())


def deferral_note(rule_id: str | None, not_before: datetime | None) -> str:
    """How a deferral is remembered in ``noted``: its rule and the moment it waits for."""
    return f"{rule_id or ''}@{not_before.isoformat() if not_before else ''}"


def borrower_hashes(account: Account) -> tuple[str, ...]:
    """Hashes of the borrower's own addresses (phone, email, push token)."""
    return _hashes(account.phone, account.email, account.push_token)


@lru_cache(maxsize=4096)
def _hashes(*addresses: str | None) -> tuple[str, ...]:
    """Cached: a batch asks for one borrower's hashes several times (history, caps, booking, delivery)."""
    return tuple(address_hash(address) for address in addresses if address)


def borrower_key(account: Account) -> str | None:
    """The key recorded on each contact to tie the loans of one person: the primary address's hash."""
    found = borrower_hashes(account)
    return found[0] if found else None
