"""The one Jinja2 environment reminder templates are compiled and rendered in.

Sandboxed (templates are edited by ops staff, not programmers), strict about
undefined variables, autoescaping only ``*.html.j2``, and never re-reading a
compiled template: templates come from a :class:`TemplateSet` read once, so a
changed template takes effect with a new snapshot and a new environment.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, MutableMapping
from typing import Any

from jinja2 import BaseLoader, Environment, StrictUndefined, TemplateNotFound
from jinja2.loaders import split_template_path
from jinja2.sandbox import SandboxedEnvironment

from dispatcher.compose.filters import FILTERS
from dispatcher.compose.layout import TemplateSet

DEFAULT_CACHE_SIZE = 10_000
"""Compiled templates kept in memory (templates × locales × parts, with room to spare)."""

HTML_SUFFIX = ".html.j2"
"""Templates whose output is HTML and is therefore autoescaped."""


def autoescape_for(template_name: str | None) -> bool:
    """Autoescape HTML templates only; plain-text parts keep their characters as written."""
    return template_name is not None and template_name.endswith(HTML_SUFFIX)


def _current() -> bool:
    return True


class SnapshotLoader(BaseLoader):
    """Loads templates from a :class:`TemplateSet`; never reads the disk.

    Names and file names are those ``FileSystemLoader`` gives for the same
    directory, so errors point at the template file. Raises
    :class:`~jinja2.TemplateNotFound` for a name the snapshot does not hold.
    """

    def __init__(self, templates: TemplateSet) -> None:
        self.templates = templates

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        pieces = split_template_path(template)
        source = self.templates.source("/".join(pieces))
        if source is None:
            raise TemplateNotFound(template)
        filename = os.path.normpath(posixpath.join(os.fspath(self.templates.root), *pieces))
        return source, filename, _current

    def list_templates(self) -> list[str]:
        return list(self.templates.files)


class _ReminderEnvironment(SandboxedEnvironment):
    """Jinja's sandboxed environment, with each template's globals one plain dict and its attribute checks kept.

    Jinja gives each template a ``ChainMap`` of its globals over the environment's, and
    every render copies it, key by key in Python, into the render's context: a quarter of
    the time of rendering a short SMS. Nothing changes the globals once templates are
    loaded (Jinja asks as much), so a copy made at loading serves every render.
    """

    _SAFE_KEPT = 4096
    """Answers of :meth:`is_safe_attribute` kept (templates read a few attributes of a few types)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._safe: dict[tuple[type, str], bool] = {}

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """The sandbox's answer, kept by the object's type and the attribute's name: it depends on nothing else
        (a leading underscore, and which attributes of functions, methods, classes, frames, generators are
        internal), and it was a third of rendering a message."""
        key = (type(obj), attr)
        safe = self._safe.get(key)
        if safe is None:
            safe = super().is_safe_attribute(obj, attr, value)
            if len(self._safe) < self._SAFE_KEPT and obj.__class__ is type(obj):
                self._safe[key] = safe
        return safe


def build_environment(templates: TemplateSet) -> SandboxedEnvironment:
    """A sandboxed environment loading from the ``templates`` snapshot with the compose filters."""
    env = _ReminderEnvironment(
        loader=SnapshotLoader(templates),
        undefined=StrictUndefined,
        autoescape=autoescape_for,
        auto_reload=False,
        cache_size=DEFAULT_CACHE_SIZE,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env
