"""Bad environment values and known errors end a command in one line on stderr and exit 2; a closed pipe ends it
quietly with 141. Real ``python -m dispatcher`` processes, so the exit codes and stderr are the user's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from dispatcher.ledger.tables import attempts, runs

Cli = Callable[..., tuple[int, str, str]]

LOG_LEVELS_QUIET = ("--log-level", "WARNING")


def dispatcher(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m dispatcher ARGS`` in the workdir with its environment plus ``env``."""
    return subprocess.run([sys.executable, "-m", "dispatcher", *args], cwd=workdir, env=environment(env),
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DISPATCHER_BROKER_URL", "DISPATCHER_LOG_LEVEL")}
    return {**base, **(extra or {})}


@pytest.fixture
def free_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound and closed again: the kernel does not hand it out at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    yield port


def assert_one_line(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr holding every fragment; that line."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- the environment ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value", "command", "shown"), [
    ("DISPATCHER_DATABASE_URL", "foo://bar", ("runs",), "DISPATCHER_DATABASE_URL='foo://bar' is not a database URL"),
    ("DISPATCHER_DATABASE_URL", "not a url", ("db", "current"),
     "DISPATCHER_DATABASE_URL='not a url' is not a database URL"),
    ("DISPATCHER_LOG_LEVEL", "verbose", ("attempts", "--format", "json"),
     "DISPATCHER_LOG_LEVEL='verbose' must be one of DEBUG, INFO, WARNING, ERROR"),
    ("DISPATCHER_CONCURRENCY", "lots", ("run", "--once"), "DISPATCHER_CONCURRENCY='lots' is not a whole number"),
])
def test_a_bad_environment_value_is_one_line_and_exit_2(workdir: Path, name: str, value: str,
                                                        command: tuple[str, ...], shown: str) -> None:
    line = assert_one_line(dispatcher(workdir, *command, env={name: value}), shown)
    assert line.startswith("dispatcher: ") and "Traceback" not in line


def test_debug_adds_the_traceback_before_the_same_line(workdir: Path) -> None:
    done = dispatcher(workdir, "--log-level", "DEBUG", "runs", env={"DISPATCHER_DATABASE_URL": "foo://bar"})
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("dispatcher: DISPATCHER_DATABASE_URL='foo://bar' is not a")


def test_an_unreachable_ledger_is_one_line_without_its_password(workdir: Path, free_port: int) -> None:
    url = f"postgresql+psycopg://lender:s3cret@127.0.0.1:{free_port}/ledger"
    line = assert_one_line(dispatcher(workdir, "runs", env={"DISPATCHER_DATABASE_URL": url}),
                           f"lender:***@127.0.0.1:{free_port}/ledger")
    assert "s3cret" not in line


def test_web_on_a_port_in_use_is_one_line_and_exit_2(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        done = dispatcher(workdir, "--log-level", "INFO", "web", "--port", str(port))
    assert_one_line(done, "dispatcher: ", str(port), "in use")  # and no "serving webhooks on …" before it


# --- a dead broker --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_dead_broker_is_one_line_and_the_run_keeps_its_true_counts(cli: Cli, anytime: Path, workdir: Path,
                                                                     ledger_url: str, free_port: int) -> None:
    assert cli("seed-demo", "--accounts", "120")[0] == 0
    broker = f"redis://:s3cret@127.0.0.1:{free_port}/0"
    done = dispatcher(workdir, *LOG_LEVELS_QUIET, "run", "--once", env={"DISPATCHER_BROKER_URL": broker})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "During handling" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"dispatcher: the broker at redis://:***@127.0.0.1:{free_port}/0 cannot be reached ")
    assert "s3cret" not in done.stderr

    engine = create_engine(ledger_url)
    with engine.connect() as connection:
        run = connection.execute(select(runs.c.id, runs.c.status, runs.c.counts, runs.c.error)).one()
        booked = connection.execute(select(func.count()).select_from(attempts).where(
            attempts.c.run_id == run.id, attempts.c.status == "planned")).scalar_one()
    engine.dispose()
    counts = run.counts if isinstance(run.counts, dict) else json.loads(run.counts)
    assert run.status == "failed" and "cannot be reached" in run.error and "s3cret" not in run.error
    assert booked > 0 and counts["planned"] == counts["pending"] == booked
    assert counts["accounts"] == 120


# --- a closed pipe --------------------------------------------------------------------------------------------------
@pytest.fixture
def ran(cli: Cli, anytime: Path, workdir: Path) -> Path:
    """A workdir whose ledger holds one run of 200 demo borrowers (several hundred attempts)."""
    assert cli("seed-demo", "--accounts", "200")[0] == 0
    assert cli("run", "--once")[0] == 0
    return workdir


@pytest.mark.parametrize(("command", "output"), [("attempts", "csv"), ("runs", "json"), ("rejects", "table")])
def test_a_closed_stdout_ends_the_command_quietly_with_141(ran: Path, command: str, output: str) -> None:
    process = subprocess.Popen([sys.executable, "-m", "dispatcher", command, "--format", output], cwd=ran,
                               env=environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.close()  # the reader is gone before the first line is written
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (141, "")


def test_attempts_piped_into_head(ran: Path) -> None:
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m dispatcher attempts --format json "
                           "| head -1; echo status=$?"], cwd=ran, env=environment(), capture_output=True, text=True,
                          timeout=120)
    assert done.stdout == "[\nstatus=141\n"  # more than a pipe's buffer of JSON: head leaves before the end
    assert done.stderr == ""


# --- known errors in-process ----------------------------------------------------------------------------------------
def test_a_known_error_is_printed_masked(cli: Cli, workdir: Path) -> None:
    assert cli("seed-demo", "--accounts", "5")[0] == 0
    code, out, err = cli("preview", "+8613812345678")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("dispatcher: account +86")
    assert "13812345678" not in err
