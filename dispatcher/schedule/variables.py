"""``${VAR}`` substitution and conversion of a ruamel.yaml tree to plain data.

``${VAR}`` is replaced by the variable's value, ``${VAR:-default}`` falls back
to ``default`` when VAR is unset or empty, and ``$${`` is a literal ``${``.
Only string values are substituted, never keys.

A variable whose name looks like a secret's (it contains TOKEN, SECRET, PASSWORD,
KEY or CREDENTIAL, in any case) may be read only in :data:`SECRET_PATHS`
(``source.url``, which is only ever shown with its password masked): anywhere
else a secret could go out in a message to a borrower (a brand name) or a log,
so it is refused there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from dispatcher.schedule.positions import YamlPath

_REFERENCE = re.compile(r"\$\$\{|\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})?")

SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL")
"""A variable whose name contains one of these (in any case) is taken for a secret."""

SECRET_PATHS: frozenset[YamlPath] = frozenset({("source", "url")})
"""The only values that may read a secret-looking variable."""

Report = Callable[[YamlPath, str], None]
"""Receives the path of a value and what is wrong with it."""


def secret_word(name: str) -> str | None:
    """The word of :data:`SECRET_WORDS` that ``name`` contains, if any."""
    upper = name.upper()
    return next((word for word in SECRET_WORDS if word in upper), None)


def substitute(text: str, env: Mapping[str, str], *, secrets: bool = False) -> tuple[str, list[str]]:
    """``text`` with references replaced, and a message for each one that cannot be.

    Secret-looking variables are refused unless ``secrets`` is true.
    """
    errors: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group("name")
        if name is None:
            errors.append("malformed variable reference; write ${NAME} or ${NAME:-default}")
            return match.group(0)
        word = None if secrets else secret_word(name)
        if word is not None:
            errors.append(f"${{{name}}} looks like a secret (its name contains {word}) and may be read only in "
                          f"{', '.join('.'.join(map(str, p)) for p in sorted(SECRET_PATHS))} (anywhere else it "
                          "could go out in a message or a log)")
            return ""
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
        text, errors = substitute(str(node), env, secrets=path in SECRET_PATHS)
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
