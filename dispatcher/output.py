"""Printing rows for people (aligned table) and machines (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, TextIO

from dispatcher.masking import mask_text

Format = Literal["table", "json", "csv"]

IDENTIFIER_COLUMNS = frozenset({"account_id", "reminder_key", "provider_message_id", "content_hash", "address_hash",
                                "borrower_hash"})
"""Columns printed as they are; every other text is masked (:func:`~dispatcher.masking.mask_text`), so rows
written before provider texts were masked show no address either. An account id or a Message-ID may look
like a number or an email without being one."""


def plain(value: Any) -> Any:
    """A JSON-friendly form of a value (ISO dates, decimals as strings)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def masked(value: Any) -> Any:
    """``value`` with the personal data in its texts masked, lists and mappings included."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, list | tuple):
        return [masked(item) for item in value]
    if isinstance(value, Mapping):
        return {key: masked(item) for key, item in value.items()}
    return value


def _shown(row: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    return {c: row.get(c) if c in IDENTIFIER_COLUMNS else masked(row.get(c)) for c in columns}


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(plain(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def write_rows(out: TextIO, rows: Iterable[Mapping[str, Any]], columns: Sequence[str], fmt: Format,
               *, widths: Mapping[str, int] | None = None) -> int:
    """Write ``rows`` in ``fmt``, personal data masked; returns how many were written. JSON is one array, streamed."""
    rows = (_shown(row, columns) for row in rows)
    if fmt == "json":
        return _json(out, rows, columns)
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        count = 0
        for row in rows:
            writer.writerow(["" if row.get(c) is None else plain(row.get(c)) for c in columns])
            count += 1
        return count
    return _table(out, rows, columns, widths or {})


def _json(out: TextIO, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> int:
    count = 0
    for row in rows:  # "[" is written with the first row, so an error before it leaves no half document
        out.write(",\n " if count else "[\n ")
        out.write(json.dumps({c: plain(row.get(c)) for c in columns}, ensure_ascii=False, default=plain))
        count += 1
    out.write("\n]\n" if count else "[]\n")
    return count


def _table(out: TextIO, rows: Iterable[Mapping[str, Any]], columns: Sequence[str],
           widths: Mapping[str, int]) -> int:
    sizes = [widths.get(c, max(len(c), 12)) for c in columns]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, sizes, strict=True)).rstrip() + "\n")
    count = 0
    for row in rows:
        cells = [_cell(row.get(c), w).ljust(w) for c, w in zip(columns, sizes, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")
        count += 1
    return count


def to_json(data: Any) -> str:
    buffer = io.StringIO()
    json.dump(data, buffer, ensure_ascii=False, indent=2, default=plain)
    return buffer.getvalue()
