"""Turning a Jinja2 exception into the template file, line and column it happened at."""

from __future__ import annotations

import re
import traceback

from jinja2 import TemplateSyntaxError

from dispatcher.compose.layout import TEMPLATE_SUFFIX
from dispatcher.errors import TemplateError

_NEWLINE = re.compile(r"\r\n|\r|\n")
_CHAR_AT = re.compile(r"^unexpected char .+ at (\d+)$")
_NAMED = re.compile(r"(?:unexpected|got|unknown tag|named) '([^']+)'")


def template_position(exc: BaseException) -> tuple[str | None, int | None]:
    """The template file and line where ``exc`` was raised, innermost template first.

    Traceback frames from ``*.j2`` files are template code (Jinja rewrites them so).
    """
    if isinstance(exc, TemplateSyntaxError):
        return exc.filename, exc.lineno
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if frame.filename.endswith(TEMPLATE_SUFFIX):
            return frame.filename, frame.lineno
    return None, None


def template_column(exc: BaseException) -> int | None:
    """The 1-based column of a syntax error when its message shows it unambiguously, else None.

    Jinja reports lines only: the column is the one of the source offset the
    lexer gives (``unexpected char ... at N``), else of the token the message
    names (``unexpected '}'``, ``unknown tag 'endfo'``) when it occurs once on the line.
    """
    if not isinstance(exc, TemplateSyntaxError) or not exc.source or exc.lineno < 1:
        return None
    at = _CHAR_AT.match(exc.message or "")
    if at is not None:
        offset = int(at.group(1))
        return offset - (exc.source.rfind("\n", 0, offset) + 1) + 1
    lines = _NEWLINE.split(exc.source)
    if exc.lineno > len(lines):
        return None
    for token in _NAMED.findall(exc.message or ""):
        columns = _occurrences(lines[exc.lineno - 1], token)
        if len(columns) == 1:
            return columns[0]
    return None


def _occurrences(line: str, token: str) -> list[int]:
    """1-based columns of ``token`` in ``line``; a name only as a whole word."""
    escaped = re.escape(token)
    pattern = rf"(?<!\w){escaped}(?!\w)" if token.isidentifier() else escaped
    return [m.start() + 1 for m in re.finditer(pattern, line)]


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
