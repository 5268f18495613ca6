"""schedules.yaml read within limits: alias bombs, deep nesting and huge files refused at their place; secrets
read only where they cannot reach a message; a running daemon keeps its last good version meanwhile."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ruamel.yaml.comments import CommentedMap

from dispatcher.errors import ConfigError, Problem
from dispatcher.schedule.loader import load_schedule
from dispatcher.schedule.yaml_limits import (
    DEFAULT_ALIAS_BUDGET,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_FILE_BYTES,
    YamlLimitError,
    limited_yaml,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = (REPO / "schedules.yaml").read_text(encoding="utf-8")

BILLION_LAUGHS = """timezone: Asia/Shanghai
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""
"""10⁹ strings once expanded. *a stands for 10 values, *b for 91, *c for 820 and *d for 7381: the aliases of
lines 3-5 add up to 9 × 10 + 9 × 91 + 9 × 820 = 8289, and the first *d (line 6) takes the total past 10,000."""


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_schedule(path, env or {})
    return list(caught.value.problems)


def at(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, col) of the ``occurrence``-th ``needle`` in ``text``."""
    index = -1
    for _ in range(occurrence):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


# --- aliases ------------------------------------------------------------------------------------------------------
def test_a_billion_laughs_file_is_refused_at_the_alias_that_crosses_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS, encoding="utf-8")
    [problem] = problems_of(path)
    assert (problem.file, problem.line, problem.col) == (str(path), *at(BILLION_LAUGHS, "*d"))
    assert problem.rule == "yaml"
    assert f"aliases expand to more than {DEFAULT_ALIAS_BUDGET} values" in problem.message


def test_validate_refuses_a_bomb_without_loading_the_delivery_stack(tmp_path: Path) -> None:
    """``dispatcher validate`` imports only what checking needs, so a refusal is quick (no timing asserted here)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS, encoding="utf-8")
    probe = ("import sys\nfrom dispatcher.cli import main\ncode = main(['validate', sys.argv[1]])\n"
             "heavy = sorted({'aiohttp', 'alembic', 'celery', 'kombu', 'twilio', 'jwt', 'redis', 'sqlalchemy',\n"
             "                'jinja2', 'babel'} & set(sys.modules))\n"
             "print(code, heavy)")
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60)
    line, col = at(BILLION_LAUGHS, "*d")
    assert done.stdout.strip() == "1 []", done.stdout + done.stderr
    assert f"bomb.yaml:{line}:{col}: the aliases expand to more than" in done.stderr


def test_the_command_line_starts_without_the_database_layer() -> None:
    """Every command pays for what ``dispatcher.cli`` imports before it chooses the handler: not SQLAlchemy."""
    probe = "import sys\nimport dispatcher.cli\nprint(sorted({'sqlalchemy', 'jinja2', 'pydantic'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def budget_file(aliases: int) -> str:
    """An anchored list standing for 100 values (itself and 99 items), repeated ``aliases`` times."""
    items = ", ".join(["x"] * 99)
    return f"base: &base [{items}]\nuses:\n" + "".join("  - *base\n" for _ in range(aliases))


def test_aliases_within_the_budget_load_and_the_first_alias_past_it_is_refused() -> None:
    per_alias = 100
    fits = DEFAULT_ALIAS_BUDGET // per_alias
    loaded = limited_yaml().load(budget_file(fits))
    assert isinstance(loaded, CommentedMap) and len(loaded["uses"]) == fits
    text = budget_file(fits + 1)
    with pytest.raises(YamlLimitError) as caught:
        limited_yaml().load(text)
    mark = caught.value.problem_mark
    assert mark is not None and (mark.line + 1, mark.column + 1) == at(text, "*base", fits + 1)


def test_an_alias_inside_the_node_it_names_is_refused(tmp_path: Path) -> None:
    text = SHIPPED + "\nloop: &loop [1, [2, *loop]]\n"
    path = tmp_path / "schedules.yaml"
    path.write_text(text, encoding="utf-8")
    [problem] = problems_of(path)
    assert (problem.line, problem.col) == at(text, "*loop")
    assert "the alias *loop is inside the node it repeats" in problem.message


def test_ordinary_anchors_and_aliases_still_work(tmp_path: Path) -> None:
    text = SHIPPED.replace("channels: [push, sms]", "channels: &pair [push, sms]", 1).replace(
        "channels: [sms, email, push]", "channels: *pair", 1)
    path = tmp_path / "schedules.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_schedule(path, {})
    assert [c.value for c in loaded.schedule.ladder[3].channels] == ["push", "sms"]  # the final step's


# --- nesting and size ---------------------------------------------------------------------------------------------
def test_deep_flow_nesting_is_refused_at_the_first_bracket_too_deep(tmp_path: Path) -> None:
    text = "timezone: [" + "[" * 100_000 + "]" * 100_001 + "\n"  # under the size limit
    path = tmp_path / "deep.yaml"
    path.write_text(text, encoding="utf-8")
    [problem] = problems_of(path)
    assert (problem.line, problem.col) == (1, len("timezone: ") + DEFAULT_MAX_DEPTH + 1)
    assert f"nests deeper than {DEFAULT_MAX_DEPTH} levels" in problem.message


def test_deep_block_nesting_is_refused(tmp_path: Path) -> None:
    lines = ["timezone:"] + [f"{'  ' * level}k{level}:" for level in range(1, DEFAULT_MAX_DEPTH + 5)]
    path = tmp_path / "deep.yaml"
    path.write_text("\n".join(lines) + " x\n", encoding="utf-8")
    [problem] = problems_of(path)
    # the file is level 1, the mapping of line n level n: the key k63 of line 64 would be level 65
    assert (problem.line, problem.col) == (DEFAULT_MAX_DEPTH, 2 * (DEFAULT_MAX_DEPTH - 1) + 1)
    assert f"nests deeper than {DEFAULT_MAX_DEPTH} levels" in problem.message


def test_a_file_over_the_size_limit_is_refused_where_the_limit_is_reached(tmp_path: Path) -> None:
    comment = "# " + "x" * 98 + "\n"  # lines of 101 bytes after the shipped file
    text = SHIPPED + comment * (DEFAULT_MAX_FILE_BYTES // len(comment) * 3)
    path = tmp_path / "schedules.yaml"
    path.write_text(text, encoding="utf-8")
    [problem] = problems_of(path)
    head = text.encode()[:DEFAULT_MAX_FILE_BYTES].decode()
    assert (problem.file, problem.line) == (str(path), head.count("\n") + 1)
    assert problem.col == len(head) - head.rfind("\n")
    assert problem.message == (f"the file has {len(text.encode()):,} bytes, more than the 256 KiB a schedule file "
                               "may have (the limit is reached here)")


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    text = SHIPPED + "#" * (DEFAULT_MAX_FILE_BYTES - len(SHIPPED.encode()))
    path = tmp_path / "schedules.yaml"
    path.write_text(text, encoding="utf-8")
    assert len(path.read_bytes()) == DEFAULT_MAX_FILE_BYTES
    assert load_schedule(path, {}).schedule.timezone == "Asia/Shanghai"


# --- secrets in ${VAR} --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["TWILIO_AUTH_TOKEN", "my_secret", "SMTP_PASSWORD", "API_KEY",
                                  "GOOGLE_APPLICATION_CREDENTIALS", "DISPATCHER_SECRET_KEY"])
def test_a_secret_looking_variable_outside_source_url_is_refused_at_its_place(tmp_path: Path, name: str) -> None:
    text = SHIPPED.replace("name: 信用钱包", f"name: ${{{name}}}", 1)
    path = tmp_path / "schedules.yaml"
    path.write_text(text, encoding="utf-8")
    [problem] = problems_of(path, {name: "sk_live_0123456789"})
    assert (problem.line, problem.col) == at(text, f"${{{name}}}")
    assert problem.message.startswith(f"${{{name}}} looks like a secret (its name contains ")
    assert "may be read only in source.url" in problem.message
    assert "sk_live" not in str(problem)


def test_a_secret_looking_variable_with_a_default_is_refused_too(tmp_path: Path) -> None:
    text = SHIPPED.replace("hotline: 400-820-1234", "hotline: 400 ${SUPPORT_TOKEN:-820-1234}", 1)
    path = tmp_path / "schedules.yaml"
    path.write_text(text, encoding="utf-8")
    [problem] = problems_of(path)
    assert (problem.line, problem.col) == at(text, "400 ${SUPPORT_TOKEN")
    assert "${SUPPORT_TOKEN} looks like a secret (its name contains TOKEN)" in problem.message


def test_source_url_may_read_a_secret_and_other_values_ordinary_variables(tmp_path: Path) -> None:
    text = SHIPPED.replace("${DISPATCHER_SOURCE_URL:-}", "${LENDER_DB_PASSWORD_URL}", 1).replace(
        "name: 信用钱包", "name: ${BRAND_NAME}", 1)
    path = tmp_path / "schedules.yaml"
    path.write_text(text, encoding="utf-8")
    env = {"LENDER_DB_PASSWORD_URL": "postgresql+psycopg://lender:s3cret@db/loans", "BRAND_NAME": "Wallet"}
    schedule = load_schedule(path, env).schedule
    assert schedule.source.url == env["LENDER_DB_PASSWORD_URL"]
    assert schedule.brand["zh-CN"].name == "Wallet"


# --- a running daemon ---------------------------------------------------------------------------------------------
@pytest.fixture
def daemon(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``dispatcher run`` (the daemon) in the workdir, its output in daemon.log; stopped with SIGTERM after."""
    log = workdir / "daemon.log"
    with log.open("ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "dispatcher", "--log-level", "INFO", "run"], cwd=workdir,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    yield process, log
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def wait_for(log: Path, pattern: str, process: subprocess.Popen[bytes], after: int = 0) -> re.Match[str]:
    """The first match of ``pattern`` in the log after offset ``after``; fails when the process ends first."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text("utf-8", "replace")[after:])
        if found:
            return found
        assert process.poll() is None, log.read_text("utf-8", "replace")[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} never logged:\n{log.read_text('utf-8', 'replace')[-3000:]}")


@pytest.mark.slow
def test_a_running_daemon_refuses_an_alias_bomb_and_keeps_its_version(
        daemon: tuple[subprocess.Popen[bytes], Path], workdir: Path) -> None:
    process, log = daemon
    schedules = workdir / "schedules.yaml"
    first = wait_for(log, r"daemon started \(schedules\.yaml version ([0-9a-f]{12})\)", process).group(1)
    good = schedules.read_text(encoding="utf-8")
    schedules.write_text(good + "\n" + BILLION_LAUGHS.replace("timezone: Asia/Shanghai\n", ""), encoding="utf-8")
    line, col = at(good + "\n" + BILLION_LAUGHS, "*d")
    line -= 1  # the bomb's own timezone line was left out
    refused = wait_for(log, rf"configuration edit refused .*version {first} keeps running", process)
    text = log.read_text("utf-8", "replace")
    assert f"{schedules}:{line}:{col}: the aliases expand to more than" in text[:refused.end()]

    schedules.write_text(good.replace("batch_size: 1000", "batch_size: 500"), encoding="utf-8")
    reloaded = wait_for(log, r"configuration reloaded: version ([0-9a-f]{12}) replaces ([0-9a-f]{12})", process)
    assert reloaded.group(2) == first != reloaded.group(1)
    assert process.poll() is None
