"""pydantic validation errors turned into short problems at their place in the YAML.

An unknown key is reported at the key (with a close known key suggested), a
missing key at the mapping that lacks it, anything else at the value.
"""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from dispatcher.errors import Problem
from dispatcher.schedule.models import Schedule
from dispatcher.schedule.positions import (
    YamlPath,
    format_path,
    key_position,
    node_position,
    value_position,
)

_EXPECTED = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def known_keys(path: YamlPath) -> list[str]:
    """The keys allowed in the mapping at ``path`` of a schedule (empty if not a model)."""
    target: Any = Schedule
    for part in path:
        target = _descend(target, part)
        if target is None:
            return []
    model = _model_in(target)
    return list(model.model_fields) if model else []


def _descend(target: Any, part: int | str) -> Any:
    """The type found one path element below ``target``."""
    model = _model_in(target)
    if model is not None:
        field = model.model_fields.get(str(part))
        return field.annotation if field else None
    container = _container_in(target)
    if container is None:
        return None
    args = get_args(container)
    return args[-1] if args else None


def _unwrapped(target: Any) -> list[Any]:
    """``target`` without Annotated, split into the members of a union."""
    if get_origin(target) is Annotated:
        return _unwrapped(get_args(target)[0])
    if get_origin(target) in (Union, types.UnionType):
        return [m for arg in get_args(target) for m in _unwrapped(arg)]
    return [target]


def _model_in(target: Any) -> type[BaseModel] | None:
    for member in _unwrapped(target):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _container_in(target: Any) -> Any:
    return next((m for m in _unwrapped(target) if get_origin(m) in (list, dict)), None)


def suggestion(path: YamlPath, key: str) -> str | None:
    """The known key closest to a misspelt ``key`` at ``path``, if any is close."""
    matches = difflib.get_close_matches(key, known_keys(path), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _where(parent: YamlPath) -> str:
    return f"in {format_path(parent)}" if parent else "at the top level"


def _unknown_key(root: Any, file: str, loc: YamlPath) -> Problem:
    parent, key = loc[:-1], str(loc[-1])
    hint = suggestion(parent, key)
    message = f"unknown key {key!r} {_where(parent)}"
    if hint:
        message += f" (did you mean {hint!r}?)"
    return Problem(file, *key_position(root, loc), message)


def _missing_key(root: Any, file: str, loc: YamlPath) -> Problem:
    message = f"missing key {loc[-1]!r} {_where(loc[:-1])}"
    return Problem(file, *node_position(root, loc[:-1]), message)


def _bad_value(root: Any, file: str, error: ErrorDetails) -> Problem:
    loc = tuple(error["loc"])
    expected = _EXPECTED.get(error["type"]) or (error.get("ctx") or {}).get("expected")
    if expected:
        detail = f"expected {expected}, got {error['input']!r}"
    elif error["type"] == "too_short":
        detail = f"needs at least {(error.get('ctx') or {}).get('min_length', 1)} item(s)"
    else:
        detail = error["msg"].removeprefix("Value error, ")
    message = f"{format_path(loc)}: {detail}" if loc else detail
    return Problem(file, *value_position(root, loc), message)


def _covered_by_suggestion(loc: YamlPath, errors: list[ErrorDetails]) -> bool:
    """Whether a missing key is the suggestion of an unknown key beside it (a typo)."""
    parent, key = loc[:-1], loc[-1]
    return any(
        e["type"] == "extra_forbidden"
        and tuple(e["loc"][:-1]) == parent
        and suggestion(parent, str(e["loc"][-1])) == key
        for e in errors
    )


def problems_from_errors(root: Any, file: str, errors: list[ErrorDetails]) -> list[Problem]:
    """One problem per pydantic error, except a missing key that a typo explains."""
    problems: list[Problem] = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden" and loc:
            problems.append(_unknown_key(root, file, loc))
        elif error["type"] == "missing" and loc:
            if not _covered_by_suggestion(loc, errors):
                problems.append(_missing_key(root, file, loc))
        else:
            problems.append(_bad_value(root, file, error))
    return problems
