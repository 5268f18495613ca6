"""The one Jinja2 environment reminder templates are compiled and rendered in.

Sandboxed (templates are edited by ops staff, not programmers), strict about
undefined variables, autoescaping only ``*.html.j2``, and never re-reading a
compiled template: a changed template takes effect with a new environment.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from dispatcher.compose.filters import FILTERS

DEFAULT_CACHE_SIZE = 10_000
"""Compiled templates kept in memory (templates × locales × parts, with room to spare)."""

HTML_SUFFIX = ".html.j2"
"""Templates whose output is HTML and is therefore autoescaped."""


def autoescape_for(template_name: str | None) -> bool:
    """Autoescape HTML templates only; plain-text parts keep their characters as written."""
    return template_name is not None and template_name.endswith(HTML_SUFFIX)


def build_environment(templates_dir: Path) -> SandboxedEnvironment:
    """A sandboxed environment loading from ``templates_dir`` with the compose filters."""
    env = SandboxedEnvironment(
        loader=FileSystemLoader(templates_dir, encoding="utf-8"),
        undefined=StrictUndefined,
        autoescape=autoescape_for,
        auto_reload=False,
        cache_size=DEFAULT_CACHE_SIZE,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env
