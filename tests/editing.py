"""Editing files as people do, and finding where a needle sits in a file: shared by the reload tests."""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, content: str) -> None:
    """Save as editors do: write a temporary file, then rename it over the original."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(content, encoding="utf-8")
    os.replace(temp, path)


def line_col(content: str, needle: str) -> tuple[int, int]:
    """1-based (line, column) of the first ``needle`` in ``content``."""
    at = content.index(needle)
    return content.count("\n", 0, at) + 1, at - (content.rfind("\n", 0, at) + 1) + 1
