"""The account source: the lender's query, streamed in batches, rows validated one by one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, RowMapping, bindparam, create_engine, text
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

    def __init__(self, engine: Engine, query: str, batch_size: int, recheck_query: str | None = None) -> None:
        self._engine = engine
        self._query = text(query)
        self._recheck = text(recheck_query).bindparams(bindparam("ids", expanding=True)) if recheck_query else None
        self._batch_size = batch_size

    @classmethod
    def from_url(cls, url: str, query: str, batch_size: int, recheck_query: str | None = None) -> AccountSource:
        return cls(create_engine(url), query, batch_size, recheck_query)

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

    def fetch(self, account_ids: Sequence[str]) -> dict[str, Account | RejectedRow]:
        """Re-read ``account_ids`` with the recheck query (one query per 500 ids)."""
        if self._recheck is None or not account_ids:
            return {}
        found: dict[str, Account | RejectedRow] = {}
        try:
            with self._engine.connect() as connection:
                for start in range(0, len(account_ids), 500):
                    chunk = list(account_ids[start : start + 500])
                    for row in connection.execute(self._recheck, {"ids": chunk}).mappings():
                        parsed = parse_row(row)
                        found[parsed.account_id or ""] = parsed
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot re-read accounts from {self._engine.url!r}: {exc}") from exc
        return found

    @property
    def can_recheck(self) -> bool:
        return self._recheck is not None

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
