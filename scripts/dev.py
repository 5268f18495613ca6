#!/usr/bin/env python3
"""Set up the project and run it or its tests: the two commands of the README.

    python3 scripts/dev.py run    install into .venv, then start the daemon on the embedded default
    python3 scripts/dev.py test   install into .venv, then ruff, mypy --strict and the whole test suite
    python3 scripts/dev.py lock   renew requirements/lock.txt (newest versions pyproject.toml allows)

Needs only Python >= 3.11 and access to the package index. Every package comes from
requirements/lock.txt, pinned and checked against its sha256 hashes; the project itself is
installed on top without dependencies. The virtual environment is brought in line with the
lock (packages it does not list are removed) whenever pyproject.toml or the lock changes.
DISPATCHER_DEV_UNLOCKED=1 installs from pyproject.toml's ranges instead, without hashes, for a
platform the lock's wheels do not cover.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed"
LOCK = ROOT / "requirements" / "lock.txt"
PROJECT = "overdue-dispatcher"
LOCK_COMMAND = "python3 scripts/dev.py lock"
BOOTSTRAP = "pip>=26.2\nsetuptools>=83\n"
"""Locked too, beside the project's own dependencies: the installer and the build backend."""


def _say(text: str) -> None:
    print(f"[dev] {text}", flush=True)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip(*, quiet: bool = True) -> list[str]:
    return [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", *(["-q"] if quiet else [])]


def _lock_entries() -> dict[str, str]:
    """The lock's entries by canonical name: each a pin with its markers and hashes, on one line."""
    entries: dict[str, str] = {}
    for line in LOCK.read_text().replace("\\\n", " ").splitlines():
        found = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if found:
            entries[_canonical(found.group(1))] = line
    return entries


def _install_locked_pip(entries: dict[str, str]) -> None:
    """Bring pip itself to the locked version first (the venv's bundled pip may be old)."""
    with tempfile.TemporaryDirectory() as folder:
        only_pip = Path(folder) / "pip.txt"
        only_pip.write_text(entries["pip"] + "\n")
        subprocess.run([*_pip(), "install", "--require-hashes", "-r", str(only_pip)], check=True)


def _remove_unlocked(entries: dict[str, str]) -> None:
    """Uninstall what the lock does not list: dropped dependencies, and this project's old name."""
    listing = subprocess.run([*_pip(quiet=False), "list", "--format=json"], capture_output=True, text=True, check=True)
    installed = {_canonical(item["name"]) for item in json.loads(listing.stdout)}
    stale = sorted(installed - set(entries) - {PROJECT})
    if stale:
        _say("removing what the lock no longer lists: " + " ".join(stale))
        subprocess.run([*_pip(), "uninstall", "-y", *stale], check=True)


def _install_from_lock(*, check: bool) -> None:
    """Install the lock, then the project; with ``check``, verify that the lock satisfies pyproject.toml."""
    entries = _lock_entries()
    _install_locked_pip(entries)
    try:
        subprocess.run([*_pip(), "install", "--require-hashes", "-r", str(LOCK)], check=True)
    except subprocess.CalledProcessError:
        sys.exit(f"[dev] could not install {LOCK.relative_to(ROOT)} on this platform; "
                 "DISPATCHER_DEV_UNLOCKED=1 installs from pyproject.toml's ranges instead")
    _remove_unlocked(entries)
    subprocess.run([*_pip(), "install", "--no-deps", "--no-build-isolation", "-e", str(ROOT)], check=True)
    if check and subprocess.call([*_pip(), "check"]) != 0:
        sys.exit(f"[dev] {LOCK.relative_to(ROOT)} does not satisfy pyproject.toml: run `{LOCK_COMMAND}`")


def ensure_venv(*, check: bool = True) -> None:
    """Create .venv and install the lock, then the project, unless already up to date.

    Without ``check`` (for ``lock``, whose lock may lag behind pyproject.toml) nothing is
    verified against pyproject.toml and the venv is not marked up to date.
    """
    if sys.version_info < (3, 11):  # noqa: UP036 (this script runs before any venv, on whatever python3 is)
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    unlocked = os.environ.get("DISPATCHER_DEV_UNLOCKED") == "1"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(b"unlocked" if unlocked else LOCK.read_bytes())
    wanted = digest.hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and (BIN / "dispatcher").exists():
        return
    if not (BIN / "python").exists():
        _say(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    if unlocked:
        _say("installing from pyproject.toml's ranges, without the lock's hashes (DISPATCHER_DEV_UNLOCKED=1)")
        subprocess.run([*_pip(), "install", "--upgrade", "pip", "setuptools"], check=True)
        subprocess.run([*_pip(), "install", "-e", f"{ROOT}[dev]"], check=True)
    else:
        _say(f"installing {LOCK.relative_to(ROOT)} (hash-checked) and the project")
        _install_from_lock(check=check)
    if check:
        STAMP.write_text(wanted)


def run(args: list[str]) -> int:
    os.chdir(ROOT)
    _say("starting the daemon on the embedded default (SQLite ledger, outbox in ./outbox); Ctrl-C stops it")
    daemon = subprocess.Popen([str(BIN / "dispatcher"), "run", "--demo", *args])
    # Ctrl-C reaches the daemon too (same process group): let it finish cleanly; pass SIGTERM on
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, _frame: daemon.send_signal(signum))
    return daemon.wait()


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_PACKAGES = ["chromium", "fonts-wqy-microhei"]
"""Debian's headless browser for the 375 px email test, and a small CJK font so Chinese emails render."""


def _ensure_chromium() -> None:
    """Install Chromium with apt-get when it is missing and we are root; else the browser tests skip (fail in CI)."""
    if CHROMIUM.exists() or not hasattr(os, "geteuid") or os.geteuid() != 0 or not Path("/usr/bin/apt-get").exists():
        return
    _say("installing chromium for the email layout tests: apt-get install -y " + " ".join(CHROMIUM_PACKAGES))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", *CHROMIUM_PACKAGES]
    for attempt in (install, ["apt-get", "update", "-qq"], install):  # a fresh image has no package lists yet
        if subprocess.call(attempt, stdout=subprocess.DEVNULL, env=env) == 0 and attempt is install:
            return
    _say("could not install chromium: the browser tests will be skipped")


def test(args: list[str]) -> int:
    """ruff, mypy, the whole suite on a SQLite ledger, then every test that uses the ledger on PostgreSQL.

    The second pass runs the tests marked ``ledger`` (tests/conftest.py marks every test using the
    ``ledger_url`` fixture): the others do not depend on the ledger backend and would only run twice. Layout
    checks in Chromium (marked ``browser``) run in the first pass only. Each pass prints its 15 slowest tests.
    Extra arguments go to both pytest runs; with an explicit ``--ledger`` there is just that one run.
    """
    os.chdir(ROOT)
    _ensure_chromium()
    pytest = [str(BIN / "python"), "-m", "pytest"]
    chosen = any(a == "--ledger" or a.startswith("--ledger=") for a in args)
    runs = [[*pytest, *args]] if chosen else [
        [*pytest, "--ledger=sqlite", "--durations=15", *args],
        [*pytest, "--ledger=postgresql", "-m", "ledger and not browser", "--durations=15", *args],
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


def lock(args: list[str]) -> int:
    """Resolve pyproject.toml (with the dev extras) afresh into requirements/lock.txt, with hashes.

    One lock for every platform and for Python 3.11 and newer (uv's universal resolution: markers
    where a platform needs other packages). Extra arguments go to ``uv pip compile``.
    """
    os.chdir(ROOT)
    command = [
        str(BIN / "uv"), "pip", "compile", "-q", "pyproject.toml", "-", "--extra", "dev", "--universal",
        "--python-version", "3.11", "--generate-hashes", "--upgrade",
        "--custom-compile-command", LOCK_COMMAND, "-o", str(LOCK.relative_to(ROOT)), *args,
    ]
    _say(" ".join(Path(command[0]).name if i == 0 else part for i, part in enumerate(command)))
    return subprocess.run(command, input=BOOTSTRAP, text=True).returncode


def main() -> int:
    commands = {"run": run, "test": test, "lock": lock}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    ensure_venv(check=sys.argv[1] != "lock")
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
