"""The ``dispatcher`` command line: thin commands that parse arguments, call the app and print.

Exit codes of every command:

* 0: done.
* 1: done, and the answer is no: ``validate`` found problems, a run ended ``failed``
  or ``interrupted``, ``runs --close`` was refused; also an unexpected internal error.
* 2: could not be done: a bad argument, a bad configuration or environment value, or a
  known error (:class:`~dispatcher.errors.DispatcherError`: the ledger, the source or the
  broker cannot be reached, ...), a port in use or another operating-system refusal.
  One line on stderr (one per problem of an invalid schedules.yaml), personal data
  masked; the traceback only with ``--log-level DEBUG``.
* 130 / 143: stopped by SIGINT / SIGTERM.
* 141 (128 + SIGPIPE): the reader of stdout went away (``dispatcher attempts | head -1``);
  nothing more is printed, as a command killed by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from dispatcher.cli.parser import build_parser
from dispatcher.errors import ConfigError, DispatcherError
from dispatcher.logs import configure_logging
from dispatcher.masking import mask_text, mask_url
from dispatcher.settings import log_format, log_level

log = logging.getLogger("dispatcher.cli")

EXIT_REFUSED = 2
"""Bad arguments, configuration or environment, or a known error: the command could not do its work."""

EXIT_CLOSED_PIPE = 128 + 13
"""stdout was closed by its reader: the status of a process ended by SIGPIPE."""


def known_error(exc: Exception) -> bool:
    """Whether ``exc`` ends a command with one line and :data:`EXIT_REFUSED`: ours, the system's and the databases'
    refusals. SQLAlchemy's are recognised only once it is loaded (it raised them, then): importing it costs every
    command half a second of start, ``--help`` and ``validate`` included."""
    if isinstance(exc, (DispatcherError, OSError)):
        return True
    database = sys.modules.get("sqlalchemy.exc")
    return database is not None and isinstance(exc, database.SQLAlchemyError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m dispatcher``."""
    args = build_parser().parse_args(argv)
    try:
        args.log_level = args.log_level or log_level(os.environ)
        formatted = log_format(os.environ)
    except ConfigError as exc:
        return _refused(exc)
    configure_logging(args.log_level, formatted)
    try:
        code: int = _handler(args.handler)(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if known_error(exc):
            return _refused(exc)
        log.debug("unexpected error", exc_info=True)
        _say(f"unexpected error: {type(exc).__name__}: {exc} (a bug: run with --log-level DEBUG for the traceback)")
        return 1
    return code


def _handler(name: str) -> Callable[[argparse.Namespace], int]:
    """The function ``"package.module:function"`` names: only the chosen command's module is imported."""
    module, _, function = name.partition(":")
    handler: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), function)
    return handler


def _refused(exc: Exception) -> int:
    """One line per problem on stderr (the traceback only at DEBUG); :data:`EXIT_REFUSED`."""
    log.debug("the command ends: %s", type(exc).__name__, exc_info=True)
    if isinstance(exc, ConfigError):
        for problem in exc.problems:  # file:line:col: ..., or an environment value
            print(_one_line(str(problem) if problem.file else f"dispatcher: {problem}"), file=sys.stderr)
    else:
        _say(str(exc) or type(exc).__name__)
    return EXIT_REFUSED


def _say(text: str) -> None:
    print(f"dispatcher: {_one_line(text)}", file=sys.stderr)


def _one_line(text: str) -> str:
    """The first line of ``text`` (a database error's SQL and parameters follow on others), masked."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return mask_url(mask_text(first))


def _closed_pipe() -> int:
    """stdout's reader is gone: point stdout at /dev/null so that nothing fails at exit; :data:`EXIT_CLOSED_PIPE`."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE
