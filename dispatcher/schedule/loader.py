"""Load schedules.yaml and its templates into a :class:`LoadedSchedule`, or report every problem with its place.

Steps: read at most the size limit of the file, parse it with ruamel.yaml
(round-trip, so positions are kept) under the alias budget and depth limit of
:mod:`dispatcher.schedule.yaml_limits`, read the
templates directory beside the file into a :class:`TemplateSet` snapshot,
substitute ``${VAR}`` from the given environment, validate with the pydantic
models, run the whole-file checks and, when given, the template checks on that
snapshot. Every finding becomes a :class:`~dispatcher.errors.Problem` (1-based
line and column) and all of them are raised together in one
:class:`~dispatcher.errors.ConfigError`. The snapshot checked is the one kept:
rendering never reads the templates directory again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from dispatcher.compose.layout import TemplateSet
from dispatcher.errors import ConfigError, Problem
from dispatcher.schedule.checks import (
    TemplateChecker,
    duplicate_names,
    overlapping_windows,
    template_problems,
    variant_views,
)
from dispatcher.schedule.models import Schedule
from dispatcher.schedule.positions import YamlPath, value_position
from dispatcher.schedule.repair import salvage
from dispatcher.schedule.validation import problems_from_errors
from dispatcher.schedule.variables import to_plain
from dispatcher.schedule.yaml_limits import YamlLimitError, limited_yaml, read_limited

VERSION_LENGTH = 12
"""Hex digits of the configuration's sha256 kept as its version."""

TEMPLATES_DIRNAME = "templates"
"""The templates directory of a schedule file: this name, beside the file."""


@dataclass(frozen=True, slots=True)
class LoadedSchedule:
    """A valid schedule, the file it came from, the template snapshot it was checked with, and their version."""

    schedule: Schedule
    path: Path
    templates: TemplateSet
    version: str
    content: bytes = field(repr=False, compare=False)
    """The file's bytes as they were read and hashed into the version: what the ledger keeps a copy of, even when
    the file has been edited again since."""

    @property
    def templates_dir(self) -> Path:
        """The directory the templates were read from."""
        return self.templates.root


def templates_dir_of(path: Path) -> Path:
    """Where the templates of the schedule file ``path`` live."""
    return path.parent / TEMPLATES_DIRNAME


def configuration_digest(content: bytes, templates: TemplateSet | None = None) -> str:
    """The sha256 (hex) of a schedule file's bytes, then each template's name and bytes in name order."""
    digest = hashlib.sha256(content)
    files = templates.files if templates is not None else {}
    for name in sorted(files):
        digest.update(b"\0%s\0%d\0" % (name.encode(), len(files[name])))
        digest.update(files[name])
    return digest.hexdigest()


def content_version(content: bytes, templates: TemplateSet | None = None) -> str:
    """The version of a configuration: the first hex digits of :func:`configuration_digest`.

    Without ``templates``, the version of the schedule file alone. Never all decimal digits (about 1 in 280
    digests start so): the logs' masking would take it for a phone number, so the first window of the digest
    holding a letter is taken then.
    """
    digest = configuration_digest(content, templates)
    for start in range(len(digest) - VERSION_LENGTH + 1):
        version = digest[start:start + VERSION_LENGTH]
        if not version.isdigit():
            return version
    return digest[:VERSION_LENGTH]  # a digest of digits only: never seen


def load_schedule(
    path: Path, env: Mapping[str, str], *, check_templates: TemplateChecker | None = None
) -> LoadedSchedule:
    """Read and validate ``path`` and snapshot its templates; raises :class:`ConfigError` listing every problem."""
    file = str(path)
    try:
        content = read_limited(path)
    except OSError as exc:
        raise ConfigError([Problem(file, 0, 0, f"cannot read the file: {exc.strerror or exc}")]) from exc
    except YamlLimitError as exc:
        raise ConfigError([_syntax_problem(exc, file)]) from None
    root = _parse(content, file)
    templates = TemplateSet.read(templates_dir_of(path))
    schedule = _validate(root, env, file, templates, check_templates)
    return LoadedSchedule(schedule, path, templates, content_version(content, templates), content)


def _parse(content: bytes, file: str) -> CommentedMap:
    """The round-trip tree of the file; a syntax error or a non-mapping is a problem."""
    try:
        root = limited_yaml().load(content)
    except YAMLError as exc:
        raise ConfigError([_syntax_problem(exc, file)]) from None
    if not isinstance(root, CommentedMap):
        what = "empty" if root is None else "not a mapping of settings"
        raise ConfigError([Problem(file, 1, 1, f"the file is {what}", rule="yaml")])
    return root


def _syntax_problem(exc: YAMLError, file: str) -> Problem:
    """A problem at the mark where the parser stopped (or a limit was reached)."""
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "invalid YAML"
        what = detail if isinstance(exc, YamlLimitError) else f"YAML syntax error: {detail}"
        if mark is not None:
            return Problem(file, mark.line + 1, mark.column + 1, what, rule="yaml")
    return Problem(file, 1, 1, f"YAML syntax error: {exc}", rule="yaml")


def _validate(
    root: CommentedMap,
    env: Mapping[str, str],
    file: str,
    templates: TemplateSet,
    check_templates: TemplateChecker | None,
) -> Schedule:
    """The validated schedule; raises :class:`ConfigError` with every problem found."""
    problems: list[Problem] = []
    unresolved: set[YamlPath] = set()

    def report(at: YamlPath, message: str) -> None:
        unresolved.add(at)
        problems.append(Problem(file, *value_position(root, at), message))

    data = _with_defaults(to_plain(root, env, report))
    problems += duplicate_names(root, data, file) + overlapping_windows(root, data, file)
    try:
        schedule: Schedule | None = Schedule.model_validate(data)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if tuple(e["loc"]) not in unresolved]
        problems += problems_from_errors(root, file, errors)
        schedule = salvage(data, exc.errors())
    if schedule is not None and check_templates is not None:
        issues = [i for view in variant_views(schedule) for i in check_templates(view, templates)]
        problems += template_problems(issues, root, data, file, templates)
    if problems or schedule is None:
        raise ConfigError(sorted(problems, key=lambda p: (p.file != file, p.file, p.line, p.col)))
    return schedule


def _with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """``source.url`` empty (as ``${DISPATCHER_SOURCE_URL:-}`` gives) means the ledger database."""
    source = data.get("source")
    if isinstance(source, dict) and source.get("url") == "":
        data["source"] = {**source, "url": None}
    return data
