"""Printing rows for people (aligned table) and machines (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from decimal import Decimal
from itertools import islice
from typing import Any, Literal, TextIO

from dispatcher.masking import mask_text

Format = Literal["table", "json", "csv"]

SIZING_ROWS = 200
"""Rows a table reads ahead to size its columns; the rest are streamed in those sizes."""
DEFAULT_WIDTH = 40
"""The most a table column takes when the command names no width for it."""
MIN_WIDTH = 10
"""The least a text column (its header too) is cut to when a table must fit the terminal."""

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


def _text(value: Any, zone: tzinfo | None) -> str:
    """A table cell's text: times in ``zone`` (as stored without it), to the second, with their offset."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        shown = value.astimezone(zone) if zone is not None and value.tzinfo is not None else value
        return shown.isoformat(sep=" ", timespec="seconds")
    return str(plain(value))


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def write_rows(out: TextIO, rows: Iterable[Mapping[str, Any]], columns: Sequence[str], fmt: Format,
               *, widths: Mapping[str, int] | None = None, zone: tzinfo | None = None,
               max_width: int | None = None) -> int:
    """Write ``rows`` in ``fmt``, personal data masked; returns how many were written. JSON is one array, streamed.

    A table shows times in ``zone`` (default: as stored) with their offset, sizes its columns to the first
    rows (at most ``widths[column]`` each, never narrower than the header) and fits ``max_width``
    (default: the terminal's, none into a pipe or a file) by cutting its widest text columns with an ellipsis.
    """
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
    width = max_width if max_width is not None else terminal_width(out)
    return _table(out, rows, columns, _Layout(widths or {}, zone, width))


def _json(out: TextIO, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> int:
    count = 0
    for row in rows:  # "[" is written with the first row, so an error before it leaves no half document
        out.write(",\n " if count else "[\n ")
        out.write(json.dumps({c: plain(row.get(c)) for c in columns}, ensure_ascii=False, default=plain))
        count += 1
    out.write("\n]\n" if count else "[]\n")
    return count


def terminal_width(out: TextIO) -> int:
    """The width a table must fit: the terminal's (or ``$COLUMNS``); unlimited into a pipe or a file."""
    if os.environ.get("COLUMNS") or _isatty(out):
        return shutil.get_terminal_size().columns
    return sys.maxsize


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except ValueError:  # closed
        return False


@dataclass(frozen=True, slots=True)
class _Layout:
    widths: Mapping[str, int]
    zone: tzinfo | None
    max_width: int


def _table(out: TextIO, rows: Iterable[Mapping[str, Any]], columns: Sequence[str], layout: _Layout) -> int:
    rows = iter(rows)
    first = [[_text(row.get(c), layout.zone) for c in columns] for row in islice(rows, SIZING_ROWS)]
    longest = [max((len(cells[i]) for cells in first), default=0) for i in range(len(columns))]
    sizes = fitted(columns, [max(len(c), n if _uncut(c) else min(layout.widths.get(c, DEFAULT_WIDTH), n))
                             for c, n in zip(columns, longest, strict=True)], layout.max_width, longest)
    _line(out, columns, sizes)
    for cells in first:
        _line(out, cells, sizes)
    count = len(first)
    for row in rows:
        _line(out, [_text(row.get(c), layout.zone) for c in columns], sizes)
        count += 1
    return count


def _line(out: TextIO, cells: Sequence[str], sizes: Sequence[int]) -> None:
    out.write("  ".join(_cell(text, size).ljust(size) for text, size in zip(cells, sizes, strict=True)).rstrip()
              + "\n")


def fitted(columns: Sequence[str], sizes: Sequence[int], max_width: int,
           longest: Sequence[int] | None = None) -> list[int]:
    """``sizes`` narrowed to fit ``max_width``, the widest text column first; ids and times are never cut.

    ``longest`` is each column's longest cell: a header longer than its cells is cut first to them. A table
    wider than ``max_width`` even then stays wider: nothing is left out.
    """
    sizes = list(sizes)
    longest = longest or sizes  # a header longer than every cell below it may be cut down to them
    floors = [size if _uncut(c) else min(size, max(3, min(n, MIN_WIDTH)))
              for c, size, n in zip(columns, sizes, longest, strict=True)]
    over = sum(sizes) + 2 * (len(sizes) - 1) - max_width
    while over > 0:
        cuttable = [i for i, size in enumerate(sizes) if size > floors[i]]
        if not cuttable:
            break
        sizes[max(cuttable, key=sizes.__getitem__)] -= 1
        over -= 1
    return sizes


def _uncut(column: str) -> bool:
    """Columns never cut to fit: ids people type again, and times."""
    return column in ("id", "account_id", "run_id") or column.endswith(("_at", "_time", "_until"))


def to_json(data: Any) -> str:
    buffer = io.StringIO()
    json.dump(data, buffer, ensure_ascii=False, indent=2, default=plain)
    return buffer.getvalue()
