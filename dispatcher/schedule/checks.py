"""Checks that need the whole of schedules.yaml, or the templates beside it.

The structural checks (duplicate names, overlapping windows) read the plain
data and report at positions of the round-trip tree, so they run even when
other parts of the file are invalid. Template checks are delegated to a
:data:`TemplateChecker` (``dispatcher.compose.renderer.check_templates``), run
on the template snapshot the schedule is loaded with, and their findings placed
at the step in schedules.yaml or at the template file's line and column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from dispatcher.channel_kind import ChannelKind
from dispatcher.compose.layout import TemplateSet
from dispatcher.errors import Problem
from dispatcher.schedule.models import DayWindow, Schedule, Step, parse_window
from dispatcher.schedule.positions import format_path, value_position


class TemplateIssue(Protocol):
    """What a template checker reports (``dispatcher.compose.renderer.TemplateProblem``)."""

    @property
    def step(self) -> str: ...
    @property
    def template(self) -> str: ...
    @property
    def locale(self) -> str: ...
    @property
    def channel(self) -> ChannelKind: ...
    @property
    def file(self) -> str | None: ...
    @property
    def line(self) -> int | None: ...
    @property
    def message(self) -> str: ...
    @property
    def missing(self) -> bool: ...


TemplateChecker = Callable[[Schedule, TemplateSet], Sequence[TemplateIssue]]
"""Checks every step's templates exist and render: ``check_templates(schedule, templates)``.

An issue may also carry ``rule`` and ``col`` (1-based column), as ``TemplateProblem`` does.
"""


def _items(data: Any, section: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, mapping)`` for each mapping in the list ``data[section]``."""
    items = data.get(section) if isinstance(data, dict) else None
    if isinstance(items, list):
        for index, item in enumerate(items):
            if isinstance(item, dict):
                yield index, item


def duplicate_names(root: Any, data: Any, file: str) -> list[Problem]:
    """A problem at each step or run whose name an earlier one already uses."""
    problems: list[Problem] = []
    for section, key, what in (("runs", "name", "run"), ("ladder", "step", "step")):
        seen: dict[str, int] = {}
        for index, item in _items(data, section):
            name = item.get(key)
            if not isinstance(name, str):
                continue
            if name in seen:
                path = (section, index, key)
                used_by = f"{section}[{seen[name]}]"
                message = f"{format_path(path)}: {what} name {name!r} is already used by {used_by}"
                problems.append(Problem(file, *value_position(root, path), message))
            else:
                seen[name] = index
    return problems


def _window(item: dict[str, Any]) -> DayWindow | None:
    """The step's days, its ``until: {days_overdue: N}`` included."""
    try:
        window = parse_window(item.get("days_overdue"))
    except ValueError:
        return None
    until = item.get("until")
    last = until.get("days_overdue") if isinstance(until, dict) else None
    if window.last is None and isinstance(last, int) and not isinstance(last, bool) and last >= window.first:
        return DayWindow(window.first, last)
    return window


def overlapping_windows(root: Any, data: Any, file: str) -> list[Problem]:
    """A problem at each step whose ``days_overdue`` overlaps an earlier step's.

    An earlier step with ``when:`` conditions may share days with later ones: the accounts it does not
    match fall through to them.
    """
    problems: list[Problem] = []
    earlier: list[tuple[str, DayWindow]] = []
    for index, item in _items(data, "ladder"):
        window = _window(item)
        if window is None:
            continue
        for name, other in earlier:
            if window.overlaps(other):
                path = ("ladder", index, "days_overdue")
                message = f"{format_path(path)} {window} overlaps step {name!r} ({other})"
                problems.append(Problem(file, *value_position(root, path), message))
        if not item.get("when"):
            earlier.append((str(item.get("step", f"ladder[{index}]")), window))
    return problems


def template_problems(
    issues: Sequence[TemplateIssue], root: Any, data: Any, file: str, templates: TemplateSet
) -> list[Problem]:
    """Template findings as problems: a missing one at its step, a broken one at its file, line and column."""
    problems: list[Problem] = []
    reported: set[tuple[str, str]] = set()
    distinct: set[tuple[object, ...]] = set()  # the checks of several variant views may find the same one
    for issue in issues:
        key = (issue.step, issue.template, issue.locale, issue.channel, issue.file, issue.line, issue.message)
        if key in distinct:
            continue
        distinct.add(key)
        if not issue.missing:
            problems.append(_broken(issue, root, data, file, templates.root))
            continue
        whole_template = not templates.has_dir(issue.template)
        group = (issue.step, "" if whole_template else issue.locale)
        if group in reported and (whole_template or not templates.has_dir(f"{issue.template}/{issue.locale}")):
            continue
        reported.add(group)
        problems.append(_missing(issue, root, data, file, templates.root))
    return problems


def _step_position(root: Any, data: Any, step: str, template: str | None = None) -> tuple[int, int]:
    """Where a step's ``template:`` value (a variant's, when ``template`` is one of them, or else the step's
    name) is written."""
    for index, item in _items(data, "ladder"):
        if item.get("step") == step:
            for number, variant in _items(item, "variants"):
                if variant.get("template") == template:
                    return value_position(root, ("ladder", index, "variants", number, "template"))
            key = "template" if "template" in item else "step"
            return value_position(root, ("ladder", index, key))
    return value_position(root, ("ladder",))


def variant_views(schedule: Schedule) -> list[Schedule]:
    """The schedule as the template checks see it: each step with variants renders its first variant (the
    control), then once more per further variant with only those steps. Every variant's templates must exist
    and pass the checks, like a step's ``template:``."""
    most = max((len(step.variants or ()) for step in schedule.ladder), default=0)
    if not most:
        return [schedule]

    def view(number: int, everything: bool) -> Schedule:
        ladder: list[Step] = []
        for step in schedule.ladder:
            if step.variants and number < len(step.variants):
                ladder.append(step.as_variant(step.variants[number].template))
            elif everything:
                ladder.append(step)
        return schedule.model_copy(update={"ladder": ladder})

    return [view(0, True), *(view(number, False) for number in range(1, most))]


def _missing(issue: TemplateIssue, root: Any, data: Any, file: str, templates_dir: Path) -> Problem:
    expected = display_template_path(issue.file, templates_dir) if issue.file else None
    where = f"no file {expected}" if expected else f"no {issue.channel} template for {issue.locale}"
    message = f"template {issue.template!r} has {where}"
    return Problem(file, *_step_position(root, data, issue.step, issue.template), message, rule="template")


def _broken(issue: TemplateIssue, root: Any, data: Any, file: str, templates_dir: Path) -> Problem:
    if issue.file is None:
        message = f"template {issue.template!r} ({issue.locale}, {issue.channel}): {issue.message}"
        return Problem(file, *_step_position(root, data, issue.step, issue.template), message, rule="template")
    shown = display_template_path(issue.file, templates_dir)
    col = getattr(issue, "col", None) or 1
    return Problem(shown, issue.line or 1, col, issue.message, rule=getattr(issue, "rule", "template"))


def display_template_path(file: str, templates_dir: Path) -> str:
    """A template file as the user would write it: under ``templates_dir`` as given."""
    path = Path(file)
    if path.is_absolute():
        for base in (templates_dir.absolute(), templates_dir.resolve()):
            if path.is_relative_to(base):
                return str(templates_dir / path.relative_to(base))
        return file
    if path.parts[: len(templates_dir.parts)] == templates_dir.parts:
        return file
    return str(templates_dir / path)
