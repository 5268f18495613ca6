"""Problems and validation results as text or JSON, for ``dispatcher validate`` and logs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from dispatcher.errors import Problem
from dispatcher.schedule.loader import LoadedSchedule

Format = Literal["text", "json"]


def format_problems(problems: Sequence[Problem], fmt: Format) -> str:
    """Text: one ``file:line:col: message`` line each; JSON: ``{"valid": false, "problems": [...]}``."""
    if fmt == "json":
        return json.dumps({"valid": False, "problems": [p.as_dict() for p in problems]}, ensure_ascii=False)
    return "\n".join(str(p) for p in problems)


def format_valid(loaded: LoadedSchedule, fmt: Format) -> str:
    """The report of a valid file: its name and version."""
    if fmt == "json":
        return json.dumps({"valid": True, "file": str(loaded.path), "version": loaded.version})
    return f"{loaded.path}: valid (version {loaded.version})"
