"""A best-effort valid schedule from an invalid one, so later checks still run.

When schedules.yaml has errors, the loader still wants to check the templates
of the steps that are fine, so that one ``validate`` shows every problem. This
module removes what pydantic refused (a misspelt key is renamed to its
suggestion, a bad optional value falls back to its default, a broken list item
is dropped) until the rest validates. The result is only used for checking,
never run.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from dispatcher.schedule.models import Schedule
from dispatcher.schedule.positions import KEY_MARK, YamlPath
from dispatcher.schedule.validation import suggestion

MAX_ROUNDS = 8
"""Rounds of removal before giving up; each round usually fixes a nesting level."""

_DROPPED = object()


def salvage(data: Any, errors: list[ErrorDetails]) -> Schedule | None:
    """A schedule built from ``data`` without the parts ``errors`` point at, or ``None``."""
    data = copy.deepcopy(data)
    for _ in range(MAX_ROUNDS):
        ordered = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")
        if not all(_fix(data, error) for error in ordered):
            return None
        data = _without_dropped(data)
        try:
            return Schedule.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
    return None


def _fix(data: Any, error: ErrorDetails) -> bool:
    """Remove or rename what ``error`` points at; ``False`` when nothing can be removed."""
    loc: YamlPath = tuple(error["loc"])
    if loc and loc[-1] == KEY_MARK:
        loc = loc[:-1]
    if not loc:
        return False
    parent = _get(data, loc[:-1])
    if parent is _DROPPED:
        return True
    if error["type"] == "extra_forbidden" and isinstance(parent, dict):
        value = parent.pop(loc[-1], None)
        hint = suggestion(loc[:-1], str(loc[-1]))
        if hint and hint not in parent:
            parent[hint] = value
        return True
    if error["type"] == "missing" and isinstance(parent, dict) and loc[-1] in parent:
        return True  # an unknown key was renamed to it
    if error["type"] != "missing" and _drop(parent, loc[-1]):
        return True
    return _drop_enclosing_item(data, loc[:-1])


def _has(container: Any, part: int | str) -> bool:
    if isinstance(container, dict):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


def _drop(parent: Any, part: int | str) -> bool:
    """Mark ``parent[part]`` for removal; ``False`` if it does not exist."""
    if not _has(parent, part):
        return False
    parent[part] = _DROPPED
    return True


def _drop_enclosing_item(data: Any, path: YamlPath) -> bool:
    """Mark the innermost list item around ``path`` for removal."""
    for depth in range(len(path), 0, -1):
        if isinstance(path[depth - 1], int):
            items = _get(data, path[: depth - 1])
            return items is _DROPPED or _drop(items, path[depth - 1])
    return False


def _get(data: Any, path: YamlPath) -> Any:
    """The value at ``path``; ``_DROPPED`` if it or a parent is marked; ``None`` if absent."""
    for part in path:
        if data is _DROPPED:
            break
        if not _has(data, part):
            return None
        data = data[part]
    return data


def _without_dropped(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_dropped(v) for k, v in data.items() if v is not _DROPPED}
    if isinstance(data, list):
        return [_without_dropped(v) for v in data if v is not _DROPPED]
    return data
