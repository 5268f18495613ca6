"""The account contract checked on the source query's columns, before any row is read.

:func:`describe` runs the query wrapped as ``SELECT * FROM (query) AS source_rows LIMIT 0``:
no row is fetched, yet the cursor names every column and (where the driver tells)
its type. :func:`contract_findings` compares them with :data:`CONTRACT`: an unknown
column (a misspelt alias gets the close contract name suggested), a missing one,
one named twice, or one whose type cannot hold the field (flags are booleans,
numbers or recognised texts, amounts numbers or text, dates dates or ISO text).
Types are read from PostgreSQL's type ids or the DB-API type objects of the
driver; SQLite tells none, so there only the names are checked.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy import Connection, text

Kind = Literal["text", "number", "boolean", "date", "datetime", "time", "binary", "other", "unknown"]
"""What a column holds, as far as the database tells; ``unknown``: it does not tell (always accepted)."""

_POSTGRES_KINDS: dict[int, Kind] = {
    16: "boolean", 20: "number", 21: "number", 23: "number", 26: "number", 700: "number", 701: "number",
    790: "number", 1700: "number", 25: "text", 1042: "text", 1043: "text", 19: "text", 18: "text",
    1082: "date", 1114: "datetime", 1184: "datetime", 1083: "time", 1266: "time", 1186: "time",
    17: "binary", 114: "other", 3802: "other", 2950: "other", 142: "other",
}
"""PostgreSQL type ids (``pg_type.oid``, the same for every driver) and what they hold."""

_DBAPI_KINDS: tuple[tuple[str, Kind], ...] = (
    ("STRING", "text"), ("NUMBER", "number"), ("DATETIME", "datetime"), ("BINARY", "binary"))
"""PEP 249 type objects (they compare equal to the type codes of their group) and what they hold."""

@dataclass(frozen=True, slots=True)
class ContractColumn:
    """One column of the account contract: the kinds it may hold, said in words, and whether the query must
    yield it."""

    accepts: frozenset[Kind]
    wanted: str
    required: bool = False

    def needed(self) -> ContractColumn:
        return replace(self, required=True)


_TEXT = ContractColumn(frozenset({"text"}), "text")
_AMOUNT = ContractColumn(frozenset({"number", "text"}), "a number (or text holding one)")
_DATE = ContractColumn(frozenset({"date", "datetime", "text"}), "a date (a date, a timestamp or ISO text)")
_FLAG = ContractColumn(frozenset({"boolean", "number", "text"}), "a flag (a boolean, 0/1 or a text such as yes/no)")
_ID = ContractColumn(frozenset({"text", "number", "other"}), "text or a number")
_LABEL = ContractColumn(frozenset({"text", "number"}), "text or a number")

CONTRACT: Mapping[str, ContractColumn] = {
    "account_id": _ID.needed(), "name": _TEXT.needed(), "phone": _TEXT.needed(), "email": _TEXT.needed(),
    "push_token": _TEXT.needed(), "locale": _TEXT.needed(), "timezone": _TEXT.needed(),
    "currency": _TEXT.needed(), "overdue_amount": _AMOUNT.needed(), "due_date": _DATE.needed(),
    "deadline": _DATE.needed(), "repayment_account": _TEXT.needed(),
    "do_not_contact": _FLAG, "dispute": _FLAG, "promise_to_pay_until": _DATE, "opt_out_channels": _TEXT,
    "cease_request": _FLAG, "attorney": _FLAG, "deceased": _FLAG, "bankruptcy": _FLAG,
    "pay_link": _TEXT, "card_last4": _TEXT, "country": _TEXT, "product": _TEXT, "segment": _TEXT,
    "risk_band": _LABEL, "amount_due": _AMOUNT,
}
"""Every column a source query may yield (PRODUCT.md, "The account contract"); ``required`` ones it must."""

ROW_REQUIRED = frozenset({"account_id", "currency", "overdue_amount", "due_date"})
"""Columns without which every row is rejected."""


@dataclass(frozen=True, slots=True)
class SourceColumn:
    """A column the query yields: its name, what it holds and the database's name of its type."""

    name: str
    kind: Kind = "unknown"
    type_name: str = ""


def wrapped(query: str) -> str:
    """``query`` as a subquery named ``source_rows`` (a trailing ``;`` dropped)."""
    return f"({query.strip().rstrip(';')}) AS source_rows"


def describe(connection: Connection, query: str) -> list[SourceColumn]:
    """The columns of ``query``, read without fetching a row; raises what the driver raises."""
    result = connection.execute(text(f"SELECT * FROM {wrapped(query)} LIMIT 0"))
    try:
        description = result.cursor.description if result.cursor is not None else None
    finally:
        result.close()
    dialect = connection.dialect
    dbapi = getattr(dialect, "loaded_dbapi", None) or getattr(dialect, "dbapi", None)
    return [_column(item[0], item[1], dialect.name, dbapi) for item in description or ()]


def _column(name: str, type_code: Any, dialect: str, dbapi: Any) -> SourceColumn:
    if type_code is None:
        return SourceColumn(name)
    if dialect == "postgresql" and isinstance(type_code, int):
        kind = _POSTGRES_KINDS.get(type_code, "unknown")
        return SourceColumn(name, kind, _type_name(type_code, dbapi, kind))
    for attribute, kind in _DBAPI_KINDS:
        group = getattr(dbapi, attribute, None)
        if group is not None and group == type_code:
            return SourceColumn(name, kind, kind)
    return SourceColumn(name)


def _type_name(oid: int, dbapi: Any, kind: Kind) -> str:
    """psycopg's name of a PostgreSQL type (``int8``, ``bool``), else the kind."""
    types = getattr(getattr(dbapi, "adapters", None), "types", None)
    info = types.get(oid) if types is not None else None
    return str(getattr(info, "name", kind))


def contract_findings(columns: Sequence[SourceColumn]) -> list[str]:
    """What is wrong with ``columns`` against :data:`CONTRACT`, one message each (empty: nothing)."""
    names = [c.name for c in columns]
    findings: list[str] = []
    suggested: set[str] = set()
    for column in columns:
        if column.name in CONTRACT:
            findings += _type_finding(column)
            continue
        hint = suggestion(column.name, names)
        if hint:
            suggested.add(hint)
        findings.append(f"column {column.name!r} is not in the account contract"
                        + (f" (did you mean {hint!r}?)" if hint else " (drop it or rename it to a contract column)"))
    findings += [f"column {name!r} is yielded {names.count(name)} times" for name in sorted(set(names))
                 if names.count(name) > 1]
    for name, wanted in CONTRACT.items():
        if wanted.required and name not in names and name not in suggested:
            findings.append(_missing(name))
    return findings


def suggestion(name: str, present: Sequence[str] = ()) -> str | None:
    """The contract column a misspelt ``name`` most likely means (one the query does not already yield)."""
    candidates = [c for c in CONTRACT if c not in present]
    lowered = name.strip().lower()
    if lowered in candidates:
        return lowered
    matches = difflib.get_close_matches(lowered, candidates, n=1, cutoff=0.7)
    return matches[0] if matches else None


def _missing(name: str) -> str:
    if name in ROW_REQUIRED:
        return f"no column {name!r}: every row would be rejected"
    return f"no column {name!r} (select NULL AS {name} if the source has none)"


def _type_finding(column: SourceColumn) -> list[str]:
    wanted = CONTRACT[column.name]
    if column.kind == "unknown" or column.kind in wanted.accepts:
        return []
    return [f"column {column.name!r} is {column.type_name or column.kind}; the contract wants {wanted.wanted}"]
