"""``column IN (a list of values)`` as one bound parameter, for the queries that run for every batch.

SQLAlchemy's ``column.in_(values)`` binds one parameter per value: the statement is
expanded and every value coerced on every call, and psycopg converts each of them
again. The history of a 1,000-account batch reads several such lists, so that cost
was a tenth of a run. Here the list is one parameter: a JSON array read with
``json_each`` on SQLite, an array compared with ``= ANY`` on PostgreSQL. Both look
each value up in the column's index, as ``IN`` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Connection, String, any_, bindparam, func, literal_column, or_, select
from sqlalchemy.dialects.postgresql import ARRAY

from dispatcher.ledger.claims import chunks

CHUNK = 5000
"""Values per statement: one bound parameter whatever the count, so only the statement's result bounds it."""

_NAME = "among_values"

def among(connection: Connection, column: ColumnElement[Any]) -> ColumnElement[bool]:
    """``column`` is one of the values bound by :func:`values` (the same connection's dialect)."""
    return _among(connection.dialect.name == "postgresql", column)


@lru_cache(maxsize=256)
def _among(postgresql: bool, column: ColumnElement[Any]) -> ColumnElement[bool]:
    """Built once per column: building it cost as much as running a batch's short look-ups."""
    if postgresql:
        return column == any_(bindparam(_NAME, type_=ARRAY(column.type)))
    return column.in_(select(literal_column("value")).select_from(func.json_each(bindparam(_NAME, type_=String()))))


def values(connection: Connection, chunk: Sequence[Any]) -> dict[str, Any]:
    """The parameters of a statement made with :func:`among`: ``chunk`` as one value."""
    if connection.dialect.name == "postgresql":
        return {_NAME: list(chunk)}
    return {_NAME: json.dumps(list(chunk))}


def rows_among(connection: Connection, query: Any, column: ColumnElement[Any], items: Iterable[Any],
               *, or_column: ColumnElement[Any] | None = None) -> Iterator[Any]:
    """The rows of ``query`` whose ``column`` (or ``or_column``) is one of ``items``, a statement per :data:`CHUNK`
    of them. With ``or_column`` each row comes once, however many of its columns match (both indexes are read)."""
    listed = items if isinstance(items, Sequence) else list(items)
    if not listed:  # nothing to look up (often: every reminder of a batch was new); the statement is not built
        return
    condition = among(connection, column)
    statement = query.where(condition if or_column is None else or_(condition, among(connection, or_column)))
    for chunk in chunks(listed, CHUNK):
        yield from connection.execute(statement, values(connection, chunk))
