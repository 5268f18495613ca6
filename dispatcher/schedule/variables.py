"""``${VAR}`` substitution and conversion of a ruamel.yaml tree to plain data.

``${VAR}`` is replaced by the variable's value, ``${VAR:-default}`` falls back
to ``default`` when VAR is unset or empty, and ``$${`` is a literal ``${``.
Only string values are substituted, never keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from dispatcher.schedule.positions import YamlPath

_REFERENCE = re.compile(r"\$\$\{|\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})?")

Report = Callable[[YamlPath, str], None]
"""Receives the path of a value and what is wrong with it."""


def substitute(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with references replaced, and a message for each one that cannot be."""
    errors: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group("name")
        if name is None:
            errors.append("malformed variable reference; write ${NAME} or ${NAME:-default}")
            return match.group(0)
        value = env.get(name)
        if value:
            return value
        default = match.group("default")
        if default is not None:
            return default
        if value is None:
            errors.append(f"environment variable {name} is not set (or write ${{{name}:-default}})")
        return value or ""

    return _REFERENCE.sub(replace, text), errors


def to_plain(node: Any, env: Mapping[str, str], report: Report, path: YamlPath = ()) -> Any:
    """A copy of ``node`` made of dicts, lists and plain scalars, with strings substituted."""
    if isinstance(node, CommentedMap):
        return {key: to_plain(value, env, report, (*path, key)) for key, value in node.items()}
    if isinstance(node, CommentedSeq):
        return [to_plain(item, env, report, (*path, index)) for index, item in enumerate(node)]
    if isinstance(node, str):
        text, errors = substitute(str(node), env)
        for error in errors:
            report(path, error)
        return text
    return _plain_scalar(node)


def _plain_scalar(value: Any) -> Any:
    """ruamel's scalar subclasses (ScalarInt, ScalarFloat, ...) as built-in types."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value
