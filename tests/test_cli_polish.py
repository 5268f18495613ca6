"""The command line's polish (issue 12): missing accounts, JSON counts, examples in --help, tables, progress."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatcher.cli import main
from dispatcher.cli.examples import EXAMPLES, commands
from dispatcher.cli.parser import build_parser
from dispatcher.cli.progress import Progress
from dispatcher.output import write_rows

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def demo(cli: Cli, anytime: Path) -> Path:
    """20 demo borrowers in the workdir's database; runs send at any hour."""
    code, _, err = cli("seed-demo", "--accounts", "20")
    assert code == 0, err
    return anytime


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_plan_of_a_missing_account_is_an_error(cli: Cli, demo: Path, fmt: str) -> None:
    code, out, err = cli("plan", "--account", "NOPE", "--format", fmt)
    assert (code, out) == (2, "")
    assert err.splitlines() == ["dispatcher: account NOPE is not in the source"]


def test_plan_of_a_known_account_still_works(cli: Cli, demo: Path) -> None:
    code, out, _ = cli("plan", "--account", "L00000002", "--format", "json")
    assert code == 0
    assert [row["account_id"] for row in json.loads(out)] == ["L00000002"]


def test_preview_of_a_missing_account_is_an_error(cli: Cli, demo: Path) -> None:
    code, out, err = cli("preview", "NOPE")
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and "NOPE" in err


def test_runs_json_gives_counts_as_an_object(cli: Cli, demo: Path) -> None:
    code, _, err = cli("run", "--once")
    assert code == 0, err
    code, out, _ = cli("runs", "--format", "json")
    assert code == 0
    counts = json.loads(out)[0]["counts"]
    assert isinstance(counts, dict) and counts["accounts"] >= 1
    code, out, _ = cli("runs", "--format", "csv")
    assert code == 0 and '"{""accounts""' in out  # CSV keeps the text


def _commands() -> list[str]:
    return [path for path, _, _ in commands(build_parser())]


def test_every_command_is_listed() -> None:
    assert {"run", "plan", "runs", "handoffs", "handoffs list", "handoffs close"} <= set(_commands())
    assert set(EXAMPLES) <= set(_commands())  # no example of a command that is gone


@pytest.mark.parametrize("path", _commands())
def test_every_help_ends_with_examples_of_its_command(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*path.split(), "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dispatcher {path}")
    examples = out.rstrip("\n").split("\nExamples:\n")
    assert len(examples) == 2, out
    lines = examples[1].splitlines()
    assert lines and all(line.startswith(f"  dispatcher {path} ") or line == f"  dispatcher {path}" for line in lines)
    for line in lines:  # each example is a command line the parser accepts
        words = shlex.split(line.split(" > ")[0])
        build_parser().parse_args(words[1:])


def _columns_line_up(table: str) -> None:
    """Every column starts where its header starts (cells are padded to the header's column)."""
    header, *rows = table.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    for row in rows:
        for start in starts[1:]:
            assert row[start - 2:start] in ("  ", "") or row[start - 1] == " ", (header, row)


@pytest.fixture
def sent(cli: Cli, demo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    code, _, err = cli("run", "--once")
    assert code == 0, err
    monkeypatch.setenv("COLUMNS", "130")
    return demo


def test_attempts_table_shows_times_in_the_schedules_zone_with_offset(cli: Cli, sent: Path) -> None:
    code, out, _ = cli("attempts", "--status", "sent", "--limit", "3")
    assert code == 0
    assert "attempted_at" in out.splitlines()[0]
    assert re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+08:00$", out.splitlines()[1])  # Asia/Shanghai
    code, utc, _ = cli("attempts", "--status", "sent", "--limit", "3", "--utc")
    assert re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00$", utc.splitlines()[1])
    code, js, _ = cli("attempts", "--status", "sent", "--limit", "1", "--format", "json")
    assert json.loads(js)[0]["attempted_at"].endswith("+00:00")  # JSON stays ISO, as stored


@pytest.mark.parametrize(("command", "width"), [(("attempts",), 130), (("runs",), 150), (("handoffs", "list"), 100)])
def test_tables_fit_the_terminal_and_line_up(cli: Cli, sent: Path, monkeypatch: pytest.MonkeyPatch,
                                            command: tuple[str, ...], width: int) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, _ = cli(*command)
    assert code == 0
    assert all(len(line) <= width for line in out.splitlines()), out
    _columns_line_up(out)


def test_runs_table_shows_fire_time_in_the_zone_or_utc(cli: Cli, sent: Path) -> None:
    _, out, _ = cli("runs")
    assert "+08:00" in out and "+00:00" not in out
    _, out, _ = cli("runs", "--utc")
    assert "+00:00" in out and "+08:00" not in out


def test_a_table_cuts_its_widest_text_column_with_an_ellipsis() -> None:
    buffer = io.StringIO()
    rows = [{"id": 1, "account_id": "L00000001", "detail": "x" * 200, "at": None}]
    write_rows(buffer, rows, ("id", "account_id", "detail"), "table", widths={"detail": 300}, max_width=40)
    header, line = buffer.getvalue().splitlines()
    assert line.startswith("1   L00000001  ") and line.endswith("…") and len(line) == 40
    assert header.index("detail") == line.index("x")


def test_a_table_into_a_pipe_is_never_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    buffer = io.StringIO()
    write_rows(buffer, [{"id": 1, "detail": "x" * 300}], ("id", "detail"), "table", widths={"detail": 300})
    assert buffer.getvalue().splitlines()[1] == "1   " + "x" * 300


def _dispatcher_on_a_terminal(workdir: Path, *args: str) -> tuple[int, bytes, str]:
    """Run ``dispatcher ARGS`` with stderr on a pseudo-terminal: (exit code, what the terminal got, stdout)."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "DISPATCHER_LOG_LEVEL": "WARNING"}
    done = subprocess.Popen([sys.executable, "-m", "dispatcher", *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=terminal)
    os.close(terminal)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out = done.stdout.read().decode() if done.stdout else ""
    os.close(controller)
    return done.wait(timeout=120), bytes(seen), out


def test_seed_demo_shows_progress_on_a_terminal_and_none_in_a_pipe(workdir: Path) -> None:
    code, terminal, out = _dispatcher_on_a_terminal(workdir, "seed-demo", "--accounts", "3000")
    assert code == 0 and "3000" in out
    assert b"seeding 3,000 demo borrowers" in terminal and b"\r" in terminal
    assert terminal.endswith(b"\r")  # the line is erased at the end
    done = subprocess.run([sys.executable, "-m", "dispatcher", "seed-demo", "--accounts", "10", "--replace"],
                          cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "seeding" not in done.stderr and "\r" not in done.stderr


def test_progress_is_silent_off_a_terminal_and_counts_on_one() -> None:
    quiet = io.StringIO()
    with Progress("planning", stream=quiet) as bar:
        bar.advance(5)
    assert quiet.getvalue() == "" and bar.count == 5
    bar = Progress("seeding", total=200, unit=" rows", stream=quiet)
    bar.advance(50)
    assert "50/200 rows [#####...............] 25%" in bar.line()


COMPLETE = """\
source <(cat)
t() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=(); _dispatcher; echo "${COMPREPLY[*]}"; }
t dispatcher pl
t dispatcher handoffs ''
t dispatcher handoffs list --status ''
t dispatcher --schedules x.yaml attempts --format ''
t dispatcher completion ''
"""


def test_bash_completion_completes_commands_options_and_choices(cli: Cli) -> None:
    code, script, _ = cli("completion", "bash")
    assert code == 0 and script.endswith("complete -F _dispatcher dispatcher\n")
    done = subprocess.run(["bash", "-c", COMPLETE], input=script, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["plan", "list show claim authorisation close --help", "open claimed closed",
                                        "table json csv", "bash zsh --help"]


def test_zsh_completion_is_the_bash_function_through_bashcompinit(cli: Cli) -> None:
    code, script, _ = cli("completion", "zsh")
    assert code == 0 and script.startswith("#compdef dispatcher\n") and "bashcompinit" in script
    assert "complete -F _dispatcher dispatcher" in script
