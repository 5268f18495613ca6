"""``dispatcher report``: the ledger's figures as one self-contained HTML page (see :mod:`dispatcher.report`)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from dispatcher.cli import common
from dispatcher.cli.progress import Progress
from dispatcher.report.page import PARTS, build_report


def report_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    with Progress("reading the ledger for the report", total=PARTS) as progress:
        page = build_report(app, args.since, args.until, progress.advance)
    if args.out:
        write_atomically(Path(args.out), page)
        print(f"report written to {args.out} ({len(page.encode()) // 1024:,} KiB)", file=sys.stderr)
    else:
        sys.stdout.write(page)
    return 0


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file beside it: a reader never sees half a page."""
    folder = path.resolve().parent
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
