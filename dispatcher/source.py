"""The account source: the lender's query, streamed in batches, rows validated one by one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, RowMapping, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.accounts import Account, RejectedRow
from dispatcher.errors import SourceError
from dispatcher.row_checks import parse_row


@dataclass(slots=True)
class SourceBatch:
    """One batch of rows: the valid accounts and the rejected rows."""

    accounts: list[Account] = field(default_factory=list)
    rejects: list[RejectedRow] = field(default_factory=list)


class AccountSource:
    """Reads overdue accounts with ``query`` from ``engine``; never holds more than a batch."""

    def __init__(self, engine: Engine, query: str, batch_size: int) -> None:
        self._engine = engine
        self._query = text(query)
        self._batch_size = batch_size

    @classmethod
    def from_url(cls, url: str, query: str, batch_size: int) -> AccountSource:
        return cls(create_engine(url), query, batch_size)

    def batches(self) -> Iterator[SourceBatch]:
        """Stream the query's rows as validated batches of at most ``batch_size``."""
        try:
            with self._engine.connect() as connection:
                result = connection.execution_options(stream_results=True, yield_per=self._batch_size).execute(
                    self._query
                )
                for rows in result.mappings().partitions(self._batch_size):
                    yield self._validate(rows)
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot read accounts from {self._engine.url!r}: {exc}") from exc

    @staticmethod
    def _validate(rows: Sequence[RowMapping]) -> SourceBatch:
        batch = SourceBatch()
        for row in rows:
            parsed = parse_row(row)
            if isinstance(parsed, Account):
                batch.accounts.append(parsed)
            else:
                batch.rejects.append(parsed)
        return batch
