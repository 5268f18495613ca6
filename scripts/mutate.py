#!/usr/bin/env python3
"""Mutation testing of the code that decides who is contacted, when and how often.

    .venv/bin/python scripts/mutate.py                 every guarded module
    .venv/bin/python scripts/mutate.py rules ladder    only some of them (names of GUARDED)
    .venv/bin/python scripts/mutate.py --report        the last run's results, without running
    .venv/bin/python scripts/mutate.py --save          keep the results so far in the repository (also mid-run)
    .venv/bin/python scripts/mutate.py --rejudge 'dispatcher.ledger.claims.x_insert_try*'   test these again

mutmut 3 (configured in pyproject.toml, ``[tool.mutmut]``) runs in a copy of the
checkout under ``build/mutmut/``, so a run never writes into the source tree and
edits made meanwhile do not disturb it; its results are kept there, and a run only
re-tests the functions that changed. Each mutant runs only the tests that cover it.

A whole run takes hours on two cores, more than one working session, so its results are also kept in the
repository (``scripts/mutation_results/``, mutmut's per-file ``.meta`` records: each mutant's result and the hash
of its function). A run in a fresh checkout starts from them, and mutmut re-tests only what is new or belongs to
a function whose code changed since. ``--save`` copies the results so far (mutmut records each as it comes)
into the repository; a run saves them when it ends. Saving keeps a kept result that mutmut dropped for a function
whose code did not change: mutmut drops them all when its configuration changes (a test file added to the
selection). ``--rejudge PATTERN`` forgets chosen results in both places, to test those mutants again.

Prints every surviving mutant, then the counts, and exits 1 when a mutant of a
guarded function survived and ``scripts/mutants_allowed.txt`` does not explain it
(one ``pattern  # reason`` a line; fnmatch patterns over mutant names).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutmut"
ALLOWED = ROOT / "scripts" / "mutants_allowed.txt"
RESULTS = ROOT / "scripts" / "mutation_results"
"""mutmut's ``.meta`` records of the guarded source files, kept in the repository between runs and checkouts."""
COPIED = ("dispatcher", "tests", "templates", "pyproject.toml", "schedules.yaml")

GUARDED: dict[str, tuple[str, ...]] = {
    "rules": ("dispatcher.rules.*", "dispatcher.send_check.*"),  # the rules, and their re-check at send time
    "ladder": ("dispatcher.ladder.*",),
    "claims": ("dispatcher.ledger.claims.*", "dispatcher.ledger.group_commit.*"),
    "finish": ("dispatcher.ledger.store.xǁLedgerǁstart_sending__mutmut_*",
               "dispatcher.ledger.store.xǁLedgerǁfinish_attempts__mutmut_*"),
    "webhooks": ("dispatcher.web.twilio_hooks.*", "dispatcher.replies.words.*", "dispatcher.replies.inbound.*",
                 "dispatcher.ledger.replies.*", "dispatcher.ledger.suppressions.*"),
}
"""Groups of mutant-name patterns whose survivors fail the command."""

_GUARDED_MODULES = ("dispatcher.rules.*", "dispatcher.send_check", "dispatcher.ladder", "dispatcher.ledger.claims",
                    "dispatcher.ledger.group_commit", "dispatcher.ledger.store", "dispatcher.web.twilio_hooks",
                    "dispatcher.replies.words", "dispatcher.replies.inbound", "dispatcher.ledger.replies",
                    "dispatcher.ledger.suppressions")
"""The modules mutated (pyproject.toml's ``only_mutate``), as dotted names: whose results are kept."""

MUTATED: dict[str, tuple[str, ...]] = dict(GUARDED)
"""What ``mutmut run`` is given per group: the guarded mutants (of store.py only its finish code)."""

SLOW_TESTS = (
    "tests/test_stops.py::test_the_daemon_refuses_a_broken_template_and_keeps_sending_with_the_last_good_one",
    "tests/test_stops.py::test_kill_9_mid_delivery_then_the_next_run_reconciles_and_finishes",
    "tests/test_stops.py::test_a_signal_stops_the_run_cleanly_and_the_next_run_sends_the_rest",
)
"""Left out of every mutant's tests (``--with-slow-tests`` keeps them): each runs daemons in subprocesses for 10 to
40 s and covers nearly every function, so a surviving mutant would cost minutes; the rules, claims and
replies they pass through are guarded by faster tests."""

NOT_KILLED = ("survived", "no tests")
_RESULT = re.compile(r"^\s+(\S+): (.+)$")


def sync(deselect: list[str]) -> None:
    """Copy the checkout's current code, tests and configuration into the work directory.

    ``deselect``: test ids left out of this run (a test another change has broken meanwhile).
    """
    WORK.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        source, target = ROOT / name, WORK / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)
    if deselect:
        config = WORK / "pyproject.toml"
        extra = "".join(f'"--deselect", "{test}", ' for test in deselect)
        key = "pytest_add_cli_args = ["
        text = config.read_text(encoding="utf-8").replace(key, key + extra, 1)
        config.write_text(text, encoding="utf-8")


def restore() -> int:
    """Put the results kept in the repository where mutmut looks for them, unless it has its own; how many."""
    restored = 0
    for kept in sorted(RESULTS.rglob("*.meta")):
        target = WORK / "mutants" / kept.relative_to(RESULTS)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kept, target)
            restored += 1
    return restored


def save() -> int:
    """Copy mutmut's current results of the guarded files into the repository; how many files."""
    saved = 0
    for meta in sorted((WORK / "mutants").rglob("*.meta")):
        relative = meta.relative_to(WORK / "mutants")
        if not matches(".".join(relative.with_suffix("").with_suffix("").parts), _GUARDED_MODULES):
            continue
        target = RESULTS / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(_merged(meta, target), indent=4), encoding="utf-8")
        saved += 1
    return saved


def _merged(meta: Path, kept: Path) -> dict[str, Any]:
    """mutmut's record ``meta``, keeping the results of ``kept`` that it has dropped for a function unchanged.

    mutmut drops every result when its configuration changes (e.g. a test file added to the selection); a
    mutant of a function whose code is the same keeps its kept result instead of being tested for hours again.
    """
    data: dict[str, Any] = json.loads(meta.read_text(encoding="utf-8"))
    if not kept.exists():
        return data
    old: dict[str, Any] = json.loads(kept.read_text(encoding="utf-8"))
    same = {f for f, h in data.get("hash_by_function_name", {}).items()
            if old.get("hash_by_function_name", {}).get(f) == h}
    for key, code in data.get("exit_code_by_key", {}).items():
        previous = old.get("exit_code_by_key", {}).get(key)
        if code is None and previous is not None and key.rpartition("__mutmut_")[0].rpartition(".")[2] in same:
            data["exit_code_by_key"][key] = previous
    return data


def rejudge(patterns: list[str]) -> int:
    """Forget the results of the mutants matching ``patterns``, here and in the repository; how many."""
    forgotten = 0
    for meta in [*sorted((WORK / "mutants").rglob("*.meta")), *sorted(RESULTS.rglob("*.meta"))]:
        data = json.loads(meta.read_text(encoding="utf-8"))
        codes = data.get("exit_code_by_key", {})
        hits = [key for key, code in codes.items() if code is not None and matches(key, patterns)]
        for key in hits:
            codes[key] = None
        if hits:
            meta.write_text(json.dumps(data, indent=4), encoding="utf-8")
            forgotten += len(hits)
    return forgotten


def mutmut(*args: str) -> subprocess.CompletedProcess[str]:
    """``mutmut args`` in the work directory, its output passed through or captured."""
    command = [str(Path(sys.executable).parent / "mutmut"), *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    capture = args[0] == "results"
    return subprocess.run(command, cwd=WORK, env=env, text=True, check=False, capture_output=capture)


def results() -> dict[str, str]:
    """Every mutant of the last run and its status."""
    done = mutmut("results", "--all", "true")
    if done.returncode != 0:
        sys.exit(f"mutmut results failed:\n{done.stderr}")
    return {m.group(1): m.group(2).strip() for m in map(_RESULT.match, done.stdout.splitlines()) if m}


def allow_list() -> dict[str, str]:
    """``pattern → reason`` from ``scripts/mutants_allowed.txt``; an entry without a reason is refused."""
    allowed: dict[str, str] = {}
    for number, line in enumerate(ALLOWED.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, _, reason = line.partition("#")
        if not reason.strip() or len(pattern.split()) != 1:
            sys.exit(f"{ALLOWED.name}:{number}: expected 'mutant-pattern  # reason'")
        allowed[pattern.strip()] = reason.strip()
    return allowed


def matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def judge(statuses: dict[str, str], groups: list[str]) -> int:
    """Print the survivors and the counts; 1 when a guarded survivor is not explained."""
    guarded = [p for g in groups for p in GUARDED[g]]
    allowed = allow_list()
    mutated = [p for g in groups for p in MUTATED[g]]
    mine = {n: s for n, s in statuses.items() if matches(n, mutated)}
    counts: Counter[str] = Counter()
    unexplained: list[str] = []
    for name, status in sorted(mine.items()):
        if status not in NOT_KILLED:
            counts[status] += 1
            continue
        if not matches(name, guarded):
            counts["survived, not guarded"] += 1
            print(f"  (not guarded) {name}: {status}")
        elif matches(name, list(allowed)):
            counts["allowed"] += 1
        else:
            counts["survived"] += 1
            unexplained.append(name)
            print(f"  SURVIVED {name}: {status}    (see: mutmut show {name}, in {WORK})")
    stale = [p for p in allowed if matches(p, mutated) and not any(fnmatch.fnmatchcase(n, p) for n in mine)]
    for pattern in stale:
        print(f"  note: allow-list entry {pattern!r} matches no mutant of this run")
    print("mutants: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if unexplained else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    # No ``choices=``: Python 3.11's argparse checks the empty default against them and refuses it.
    parser.add_argument("groups", nargs="*", metavar="GROUP",
                        help=f"groups to run (default: all): {', '.join(GUARDED)}")
    parser.add_argument("--report", action="store_true", help="judge the last run's results without running")
    parser.add_argument("--rejudge", action="append", default=[], metavar="PATTERN",
                        help="forget the results of these mutants first (after a test was added for them)")
    parser.add_argument("--save", action="store_true",
                        help=f"copy the results so far into {RESULTS.relative_to(ROOT)}/ (to commit) and stop")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--mutants", action="append", default=[], metavar="PATTERN",
                        help="run only the mutants matching this name pattern, e.g. 'dispatcher.rules.cap.*'")
    parser.add_argument("--deselect", action="append", default=[], metavar="TEST",
                        help="leave this test id out (repeatable)")
    parser.add_argument("--with-slow-tests", action="store_true",
                        help="also run the daemon stop tests left out by default (SLOW_TESTS)")
    options = parser.parse_args(argv)
    unknown = [g for g in options.groups if g not in GUARDED]
    if unknown:
        parser.error(f"unknown group {unknown[0]!r} (choose from {', '.join(GUARDED)})")
    groups = list(options.groups) or list(GUARDED)
    if options.save:
        print(f"kept the results of {save()} file(s) in {RESULTS.relative_to(ROOT)}/")
        return 0
    if not options.report:
        sync([*options.deselect, *(() if options.with_slow_tests else SLOW_TESTS)])
        restored = restore()
        if restored:
            print(f"resuming from the results kept in {RESULTS.relative_to(ROOT)}/ ({restored} file(s))")
        if options.rejudge:
            print(f"forgot the results of {rejudge(options.rejudge)} mutant(s) to judge them again")
        patterns = options.mutants or [p for g in groups for p in MUTATED[g]]
        try:
            done = mutmut("run", "--max-children", str(options.max_children), *patterns)
        finally:
            save()
        if done.returncode != 0:
            print(f"mutmut run ended with exit code {done.returncode}", file=sys.stderr)
            return 2
    return judge(results(), groups)


if __name__ == "__main__":
    sys.exit(main())
