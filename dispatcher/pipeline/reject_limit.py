"""``source.max_reject_ratio``: a run whose source rows fail the account contract too often stops and fails.

Many bad rows mean a broken mapping or a broken export, not a few typos, and the
rows that still pass cannot be trusted either (a shifted column may still parse),
so such a run books nothing more once the share is crossed. The share is judged
before each batch is booked, on every row with an account id read so far (the
batch included); rows without an id (read first) are judged with all the others
when the source is exhausted. A mapping that breaks every row therefore sends
nothing; batches booked before the limit was crossed were each within it.
"""

from __future__ import annotations

from collections import Counter

from dispatcher.errors import DispatcherError
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.source import SourceBatch


class TooManyRejects(DispatcherError):
    """More than ``source.max_reject_ratio`` of a run's rows were rejected; the message counts them per field."""


class RejectLimit:
    """Counts a run's source rows and rejects, batch by batch, against ``ratio`` (0 to 1)."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.rows = 0
        self.rejected = 0
        self.without_id = 0
        self.fields: Counter[str] = Counter()

    def admit(self, batch: SourceBatch, counts: RunCounts) -> None:
        """Count ``batch`` before it is booked; raises :class:`TooManyRejects` (the batch's rejects added to
        ``counts``, its accounts not planned) when the rows read so far are over the limit."""
        missing_id = sum(1 for r in batch.rejects if r.account_id is None)
        self.without_id += missing_id
        self.rows += len(batch.accounts) + len(batch.rejects) - missing_id
        self.rejected += len(batch.rejects) - missing_id
        self.fields.update(r.field for r in batch.rejects)
        if self._over(self.rejected, self.rows):
            counts.rejected += len(batch.rejects)
            counts.accounts += len(batch.rejects)
            raise TooManyRejects(self.describe("stopped before booking the rest"))

    def absorb(self, other: RejectLimit) -> None:
        """Add the rows and rejects another process counted over its key range of the same run."""
        self.rows += other.rows
        self.rejected += other.rejected
        self.without_id += other.without_id
        self.fields.update(other.fields)

    def finish(self) -> None:
        """Judge the whole run once the source is exhausted; raises :class:`TooManyRejects`."""
        if self._over(self.rejected + self.without_id, self.rows + self.without_id):
            raise TooManyRejects(self.describe("every row read was booked"))

    def _over(self, rejected: int, rows: int) -> bool:
        return rows > 0 and rejected > self.ratio * rows

    def describe(self, outcome: str) -> str:
        """``"312 of 1000 source rows failed the account contract (31.2 % > source.max_reject_ratio 5 %): …"``."""
        rejected, rows = self.rejected + self.without_id, self.rows + self.without_id
        reasons = ", ".join(f"{field} {n}" for field, n in sorted(self.fields.items(), key=lambda i: (-i[1], i[0])))
        return (f"{rejected} of {rows} source rows failed the account contract ({_percent(rejected / rows)} > "
                f"source.max_reject_ratio {_percent(self.ratio)}): {reasons}; {outcome} "
                "(dispatcher rejects shows each row and its reason)")


def _percent(share: float) -> str:
    return f"{share * 100:.3g} %"
