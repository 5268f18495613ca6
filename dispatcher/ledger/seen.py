"""The accounts a run read, kept compact: 8 bytes an account, however long its id.

A run that reads a million accounts must know at its end which open delinquencies it did not read
(:meth:`~dispatcher.ledger.outcomes.CureTracker.finish`); a set of a million id strings costs about 100 MB, and its
key ranges, planned in other processes or on other machines, report theirs to the daemon. An :class:`AccountSet`
keeps a 64-bit fingerprint of each id instead (BLAKE2b, the same in every process), in 256 arrays by its low byte,
each sorted once when first asked.

Two ids with one fingerprint (about one chance in 10^7 among a million accounts) make an account that was not read
count as read: its delinquency stays open one run longer. The error never goes the other way: no delinquency is
cured for an account that was read.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable
from hashlib import blake2b

_BUCKETS = 256


def fingerprint(account_id: str) -> int:
    """The id's 64-bit fingerprint, as a signed integer (an ``array('q')`` item)."""
    return int.from_bytes(blake2b(account_id.encode(), digest_size=8).digest(), "little", signed=True)


class AccountSet:
    """Account ids added by fingerprint; ``in`` answers whether an id was added."""

    __slots__ = ("_buckets", "_unsorted")

    def __init__(self) -> None:
        self._buckets = [array("q") for _ in range(_BUCKETS)]
        self._unsorted: set[int] = set()

    def add(self, account_id: str) -> None:
        self.absorb((fingerprint(account_id),))

    def update(self, account_ids: Iterable[str]) -> None:
        self.absorb(fingerprint(account_id) for account_id in account_ids)

    def absorb(self, fingerprints: Iterable[int]) -> None:
        """Add what :meth:`fingerprints` of another set returned (another process's accounts)."""
        for value in fingerprints:
            bucket = value & (_BUCKETS - 1)
            self._buckets[bucket].append(value)
            self._unsorted.add(bucket)

    def fingerprints(self) -> array[int]:
        """Every fingerprint added, once each: what a key range reports to its run."""
        every = array("q")
        for bucket in range(_BUCKETS):
            every.extend(self._sorted(bucket))
        return every

    def __contains__(self, account_id: object) -> bool:
        if not isinstance(account_id, str):
            return False
        value = fingerprint(account_id)
        items = self._sorted(value & (_BUCKETS - 1))
        at = bisect_left(items, value)
        return at < len(items) and items[at] == value

    def __len__(self) -> int:
        return sum(len(self._sorted(bucket)) for bucket in range(_BUCKETS))

    def _sorted(self, bucket: int) -> array[int]:
        """The bucket's fingerprints, sorted and without repeats (sorted when first asked after an addition)."""
        if bucket in self._unsorted:
            self._buckets[bucket] = array("q", sorted(set(self._buckets[bucket])))
            self._unsorted.discard(bucket)
        return self._buckets[bucket]
