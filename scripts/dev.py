#!/usr/bin/env python3
"""Set up the project and run it or its tests: the two commands of the README.

    python3 scripts/dev.py run    install into .venv, then start the daemon on the embedded default
    python3 scripts/dev.py test   install into .venv, then ruff, mypy --strict and the whole test suite

Needs only Python >= 3.11 and access to the package index. The virtual
environment is (re)installed when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed"


def _say(text: str) -> None:
    print(f"[dev] {text}", flush=True)


def ensure_venv() -> None:
    """Create .venv and install the project with its dev extras unless already up to date."""
    if sys.version_info < (3, 11):  # noqa: UP036 (this script runs before any venv, on whatever python3 is)
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and (BIN / "dispatcher").exists():
        return
    if not (BIN / "python").exists():
        _say(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    _say("installing the project and its dependencies (first time only)")
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip", "setuptools", "wheel"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def run(args: list[str]) -> int:
    os.chdir(ROOT)
    _say("starting the daemon on the embedded default (SQLite ledger, outbox in ./outbox); Ctrl-C stops it")
    daemon = subprocess.Popen([str(BIN / "dispatcher"), "run", "--demo", *args])
    # Ctrl-C reaches the daemon too (same process group): let it finish cleanly; pass SIGTERM on
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, _frame: daemon.send_signal(signum))
    return daemon.wait()


def test(args: list[str]) -> int:
    """ruff, mypy, the whole suite on a SQLite ledger, then every test that uses the ledger on PostgreSQL.

    The second pass runs the tests marked ``ledger`` (tests/conftest.py marks every test using the
    ``ledger_url`` fixture): the others do not depend on the ledger backend and would only run twice.
    Extra arguments go to both pytest runs; with an explicit ``--ledger`` there is just that one run.
    """
    os.chdir(ROOT)
    pytest = [str(BIN / "python"), "-m", "pytest"]
    chosen = any(a == "--ledger" or a.startswith("--ledger=") for a in args)
    runs = [[*pytest, *args]] if chosen else [
        [*pytest, "--ledger=sqlite", *args],
        [*pytest, "--ledger=postgresql", "-m", "ledger", *args],
    ]
    steps = [
        [str(BIN / "ruff"), "check", "dispatcher", "tests", "bench", "scripts"],
        [str(BIN / "mypy"), "--strict", "dispatcher"],
        *runs,
    ]
    for step in steps:
        _say(" ".join(Path(step[0]).name if i == 0 else part for i, part in enumerate(step)))
        code = subprocess.call(step)
        if code != 0:
            return code
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test"):
        print(__doc__)
        return 2
    ensure_venv()
    command, rest = sys.argv[1], sys.argv[2:]
    return run(rest) if command == "run" else test(rest)


if __name__ == "__main__":
    sys.exit(main())
