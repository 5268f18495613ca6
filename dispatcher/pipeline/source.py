"""The account source: the lender's query, read in batches, rows validated one by one.

Batches are read by keyset pagination on ``account_id`` (``WHERE account_id > last ORDER
BY account_id LIMIT n`` around the configured query), each in its own short statement:
a cursor held open for a whole run would pin a database snapshot for its length (on
SQLite it stops WAL checkpoints, and the ledger written meanwhile slows down as the WAL
grows). Rows without an id are read once, first, to be rejected with their reason.

Before the first row, the query's columns are read without fetching a row and checked
against the account contract (:mod:`dispatcher.pipeline.source_contract`): a broken mapping
(a misspelt alias, a missing column, a column of the wrong type) stops a run or a plan
with a :class:`~dispatcher.errors.ConfigError` naming every finding. Ids of any type
work as they are: the comparisons with ``''`` that find rows without an id are only
made when the id column holds text (or its type is unknown, as on SQLite).
"""

from __future__ import annotations

import itertools
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, RowMapping, TextClause, bindparam, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.accounts import Account, RejectedRow
from dispatcher.errors import ConfigError, Problem, SourceError
from dispatcher.pipeline.row_checks import parse_row
from dispatcher.pipeline.source_contract import SourceColumn, contract_findings, describe, wrapped


@dataclass(slots=True)
class SourceBatch:
    """One batch of rows: the valid accounts and the rejected rows."""

    accounts: list[Account] = field(default_factory=list)
    rejects: list[RejectedRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class KeyRange:
    """Account ids after ``after`` (exclusive) up to ``upto`` (inclusive); ``None``: unbounded on that side.

    ``first``: the range that also reads the rows without an id (to reject them with their reason).
    """

    after: object | None = None
    upto: object | None = None
    first: bool = True

    @property
    def portable(self) -> bool:
        """Whether the bounds survive JSON (a Celery task): integers, texts or decimals, as ids are."""
        return all(b is None or (isinstance(b, int | str | Decimal) and not isinstance(b, bool))
                   for b in (self.after, self.upto))

    def to_json(self) -> dict[str, Any]:
        """The range as JSON, each bound with its type; raises TypeError when it is not :attr:`portable`."""
        if not self.portable:
            raise TypeError(f"a key range with bounds {self.after!r} and {self.upto!r} cannot be sent to a worker")
        return {"after": _typed(self.after), "upto": _typed(self.upto), "first": self.first}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRange:
        return cls(_untyped(data["after"]), _untyped(data["upto"]), bool(data["first"]))


def _typed(bound: object | None) -> list[str] | None:
    return None if bound is None else [type(bound).__name__, str(bound)]


def _untyped(given: list[str] | None) -> object | None:
    if given is None:
        return None
    kind, value = given
    if kind == "int":
        return int(value)
    return Decimal(value) if kind == "Decimal" else value


def tapered_sizes(count: int, processes: int, min_rows: int, parts: int) -> list[int]:
    """Rows per key range for ``processes`` that take the ranges in turn (guided self-scheduling): each range holds
    a ``2 * processes``-th of the rows not yet given out, at least ``min_rows``, at most ``parts`` ranges in all.
    With less than two ranges of ``min_rows`` left, the last two share them, so that no range is longer than the
    one before (unless the ``parts`` ran out).

    20,000 rows for 2 processes, at least 1,000 each: 5,000, 3,750, 2,813, 2,110, 1,582, 1,187, 1,000, 1,000, 779
    and 779. The first ranges are long, so few ranges are handed out; the last are short, so no process plans
    alone for long at the end.
    """
    sizes: list[int] = []
    left = count
    while left > 0:
        size = max(min_rows, -(-left // (2 * processes)))
        if len(sizes) == parts - 1:
            size = left
        elif left - size < min_rows:
            size = left if left <= min_rows or not sizes else left - left // 2
        sizes.append(size)
        left -= size
    return sizes


class AccountSource:
    """Reads overdue accounts with ``query`` from ``engine``; never holds more than a batch."""

    def __init__(self, engine: Engine, query: str, batch_size: int, recheck_query: str | None = None) -> None:
        self._engine = engine
        self._query = query
        self._source = source = wrapped(query)
        self._pages = {  # (rows without an id, the condition of rows with one) when the id column holds text, and not
            True: (text(f"SELECT * FROM {source} WHERE account_id IS NULL OR account_id = ''"), "account_id <> ''"),
            False: (text(f"SELECT * FROM {source} WHERE account_id IS NULL"), "account_id IS NOT NULL"),
        }
        self._recheck = text(recheck_query).bindparams(bindparam("ids", expanding=True)) if recheck_query else None
        self._batch_size = batch_size
        self._last: dict[str, tuple[dict[str, object], Account]] = {}  # the last batch: raw row and account

    @classmethod
    def from_url(cls, url: str, query: str, batch_size: int, recheck_query: str | None = None) -> AccountSource:
        return cls(create_engine(url, hide_parameters=True), query, batch_size, recheck_query)

    def batches(self, key_range: KeyRange | None = None) -> Iterator[SourceBatch]:
        """The query's rows (those of ``key_range`` only, when given) as validated batches of at most
        ``batch_size``, in account id order; rows without an id come first, in the first range only."""
        key_range = key_range or KeyRange()
        try:
            without_id, with_id = self._pages[self._textual_ids()]
            if key_range.first:
                missing = self._read(without_id, {})
                if missing:
                    yield self._validate(missing)
            upper = " AND account_id <= :upto" if key_range.upto is not None else ""
            bounds = {"upto": key_range.upto} if key_range.upto is not None else {}
            first = with_id + (" AND account_id > :after" if key_range.after is not None else "") + upper
            after = {"after": key_range.after} if key_range.after is not None else {}
            rows = self._read(self._ordered(first), {**after, **bounds, "limit": self._batch_size})
            page = self._ordered("account_id > :after" + upper)
            while rows:
                yield self._validate(rows)
                if len(rows) < self._batch_size:
                    return
                rows = self._read(page, {"after": rows[-1]["account_id"], **bounds, "limit": self._batch_size})
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot read accounts from {self._engine.url!r}: {exc}") from exc
        finally:
            self._last = {}

    def count(self) -> int:
        """The rows with an account id (those a split shares out). Raises :class:`SourceError`."""
        try:
            with_id = self._pages[self._textual_ids()][1]
            with self._engine.connect() as connection:
                return int(connection.execute(text(f"SELECT count(*) FROM {self._source} WHERE {with_id}"))
                           .scalar_one())
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot count the accounts of {self._engine.url!r}: {exc}") from exc

    def split(self, parts: int, min_rows: int, *, taper: int = 0) -> list[KeyRange]:
        """At most ``parts`` key ranges of about as many rows each, none under ``min_rows`` (one range for a small
        source); together they hold every row once. Raises :class:`SourceError`.

        ``taper``: the ranges are taken in turn by that many processes, so they shrink instead
        (:func:`tapered_sizes`): the last ones taken are the smallest, and the processes end close together.
        """
        count = self.count()
        try:
            with_id = self._pages[self._textual_ids()][1]
            with self._engine.connect() as connection:
                if taper > 1:
                    sizes = tapered_sizes(count, taper, min_rows, parts)
                else:
                    even = min(parts, count // max(1, min_rows))
                    sizes = [count * (i + 1) // even - count * i // even for i in range(even)] if even > 1 else []
                if len(sizes) < 2:
                    return [KeyRange()]
                nth = text(f"SELECT account_id FROM {self._source} WHERE {with_id} ORDER BY account_id "
                           "LIMIT 1 OFFSET :offset")
                bounds = [connection.execute(nth, {"offset": end - 1}).scalar_one()
                          for end in itertools.accumulate(sizes[:-1])]
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot split the accounts of {self._engine.url!r}: {exc}") from exc
        edges: list[object | None] = [None, *bounds, None]
        return [KeyRange(edges[i], edges[i + 1], first=i == 0) for i in range(len(sizes))]

    def _ordered(self, condition: str) -> TextClause:
        return text(f"SELECT * FROM {self._source} WHERE {condition} ORDER BY account_id LIMIT :limit")

    def check_contract(self) -> None:
        """Raise :class:`ConfigError` when the query's columns break the account contract (no row is read)."""
        try:
            self._textual_ids()
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot read accounts from {self._engine.url!r}: {exc}") from exc

    def columns(self) -> list[SourceColumn]:
        """The query's columns and their kinds, read without fetching a row; raises SQLAlchemy's errors."""
        with self._engine.connect() as connection:
            return describe(connection, self._query)

    def _textual_ids(self) -> bool:
        """Check the query's columns against the contract (raises ConfigError); whether ids may be text."""
        columns = self.columns()
        findings = contract_findings(columns)
        if findings:
            raise ConfigError([Problem("", 0, 0, f"source.query: {finding}", rule="source") for finding in findings])
        kind = next((c.kind for c in columns if c.name == "account_id"), "unknown")
        return kind in ("text", "unknown")

    def _read(self, statement: TextClause, params: dict[str, object]) -> list[RowMapping]:
        with self._engine.connect() as connection:
            return list(connection.execute(statement, params).mappings())

    def fetch(self, account_ids: Sequence[str], known_phones: Container[str] = ()) -> dict[str, Account | RejectedRow]:
        """Re-read ``account_ids`` with the recheck query (one query per 500 ids); see :func:`parse_row`
        for ``known_phones``."""
        if self._recheck is None or not account_ids:
            return {}
        found: dict[str, Account | RejectedRow] = {}
        try:
            with self._engine.connect() as connection:
                for start in range(0, len(account_ids), 500):
                    chunk = list(account_ids[start : start + 500])
                    for row in connection.execute(self._recheck, {"ids": chunk}).mappings():
                        raw = dict(row)  # a dict: a missing optional column is cheap
                        last = self._last.get(str(raw.get("account_id")))
                        parsed = last[1] if last and last[0] == raw else parse_row(raw, known_phones)
                        found[parsed.account_id or ""] = parsed
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot re-read accounts from {self._engine.url!r}: {exc}") from exc
        return found

    @property
    def can_recheck(self) -> bool:
        return self._recheck is not None

    def _validate(self, rows: Sequence[RowMapping]) -> SourceBatch:
        """Parse a batch; its rows are kept until the next so that a re-read row that did not change is
        not validated again (delivery in this process re-reads the batch just before sending it)."""
        batch = SourceBatch()
        self._last = {}
        for row in rows:
            raw = dict(row)  # a dict: a missing optional column is cheap
            parsed = parse_row(raw)
            if isinstance(parsed, Account):
                batch.accounts.append(parsed)
                self._last[parsed.account_id] = (raw, parsed)
            else:
                batch.rejects.append(parsed)
        return batch
