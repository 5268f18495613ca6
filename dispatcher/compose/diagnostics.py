"""Turning a Jinja2 exception into the template file and line it happened at."""

from __future__ import annotations

import traceback

from jinja2 import TemplateSyntaxError

from dispatcher.errors import TemplateError

TEMPLATE_SUFFIX = ".j2"
"""Traceback frames from files with this suffix are template code (Jinja rewrites them so)."""


def template_position(exc: BaseException) -> tuple[str | None, int | None]:
    """The template file and line where ``exc`` was raised, innermost template first."""
    if isinstance(exc, TemplateSyntaxError):
        return exc.filename, exc.lineno
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if frame.filename.endswith(TEMPLATE_SUFFIX):
            return frame.filename, frame.lineno
    return None, None


def describe(exc: BaseException) -> str:
    """A one-line description of a template failure, without Jinja's file decorations."""
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {exc.message}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def as_template_error(exc: BaseException, fallback_file: str) -> TemplateError:
    """A :class:`TemplateError` naming the file and line of ``exc`` (``fallback_file`` if unknown)."""
    file, line = template_position(exc)
    return TemplateError(describe(exc), file=file or fallback_file, line=line)
