"""The ``dispatcher`` command line: thin commands that parse arguments, call the app and print."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dispatcher.cli.parser import build_parser
from dispatcher.errors import ConfigError, DispatcherError
from dispatcher.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m dispatcher``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except DispatcherError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
