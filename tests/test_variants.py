"""Template variants: validation at file:line:col, a stable assignment per borrower, the variant on every attempt."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, FixedClock
from rows import demo_row, seed_rows
from sqlalchemy import select

from dispatcher.app import App
from dispatcher.errors import ConfigError
from dispatcher.ledger.claims import insert_try
from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.run import Runner
from dispatcher.schedule.loader import load_schedule
from dispatcher.schedule.models import Step, Variant, variant_bucket

REPO = Path(__file__).resolve().parent.parent
SHIPPED_TEXT = (REPO / "schedules.yaml").read_text(encoding="utf-8")
_START = SHIPPED_TEXT.index("    variants:")
SHIPPED_VARIANTS = SHIPPED_TEXT[_START : SHIPPED_TEXT.index("    bucket:", _START)]
"""The shipped firm step's experiment: its control ``firm`` and ``firm_help``."""


def firm(*variants: tuple[str, int]) -> Step:
    return Step.model_validate({"step": "firm", "days_overdue": "4-14", "channels": ["sms"],
                                "variants": [{"template": t, "weight": w} for t, w in variants]})


# assignment ------------------------------------------------------------------------------------------------------
def test_assignment_is_sha256_of_step_and_account_into_the_cumulative_weights() -> None:
    step = firm(("a", 1), ("b", 3))
    for account_id in ("L00000001", "L00000002", "账户-7"):
        digest = hashlib.sha256(f"firm\0{account_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % 4
        assert variant_bucket("firm", account_id, 4) == point
        assert step.variant_for(account_id) == ("a" if point < 1 else "b")
        assert step.template_for(account_id) == step.variant_for(account_id)


def test_assignment_follows_the_weights_and_never_changes() -> None:
    step = firm(("a", 20), ("b", 30), ("c", 50))
    ids = [f"L{n:08d}" for n in range(6000)]
    first = [step.variant_for(i) for i in ids]
    assert first == [step.variant_for(i) for i in ids]  # the same borrower, the same variant
    shares = Counter(first)
    for name, weight in (("a", 0.2), ("b", 0.3), ("c", 0.5)):
        assert abs(shares[name] / len(ids) - weight) < 0.025, shares
    other = Step.model_validate({"step": "other", "days_overdue": "4-14", "channels": ["sms"],
                                 "variants": [{"template": "a", "weight": 20}, {"template": "b", "weight": 30},
                                              {"template": "c", "weight": 50}]})
    assert [other.variant_for(i) for i in ids] != first  # each step splits its borrowers afresh


def test_a_step_without_variants_has_none() -> None:
    step = Step.model_validate({"step": "gentle", "days_overdue": "1-3", "channels": ["sms"], "template": "g"})
    assert (step.variant_for("L1"), step.template_for("L1"), step.template_name) == (None, "g", "g")
    assert firm(("a", 1), ("b", 1)).template_name == "a"  # the control
    assert firm(("a", 1), ("b", 1)).as_variant("b").template_for("L1") == "b"


# validation ------------------------------------------------------------------------------------------------------
def problems_of(tmp_path: Path, variants: str, *, check: bool = False) -> list[tuple[int, int, str]]:
    text = SHIPPED_TEXT.replace(SHIPPED_VARIANTS, variants)
    assert text != SHIPPED_TEXT or variants == SHIPPED_VARIANTS
    path = tmp_path / "schedules.yaml"
    path.write_text(text, encoding="utf-8")
    if check:
        from dispatcher.rules.content import template_checks

        checker = template_checks
    else:
        checker = None
    with pytest.raises(ConfigError) as caught:
        load_schedule(path, {}, check_templates=checker)
    return [(p.line, p.col, p.message) for p in caught.value.problems]


def line_of(variants: str, needle: str) -> int:
    text = SHIPPED_TEXT.replace(SHIPPED_VARIANTS, variants)
    return text[: text.index(needle)].count("\n") + 1


@pytest.mark.parametrize(("variants", "needle", "message"), [
    ("    template: firm\n" + SHIPPED_VARIANTS, "      - {template: firm,",
     "ladder[2].variants: a step names one `template` or several `variants`, not both"),
    ("    variants: [{template: firm, weight: 50}]\n", "    variants:",
     "ladder[2].variants: an experiment needs at least 2 variants"),
    ("    variants: [{template: firm, weight: 50}, {template: firm, weight: 5}]\n", "    variants:",
     "ladder[2].variants: variant template 'firm' is listed twice"),
    ("    variants: [{template: firm, weight: 0}, {template: firm_help, weight: 5}]\n", "    variants:",
     "ladder[2].variants[0].weight: Input should be greater than or equal to 1"),
    ("    variants: [{template: firm, weight: '50'}, {template: firm_help, weight: 5}]\n", "    variants:",
     "ladder[2].variants[0].weight: expected a whole number, got '50'"),
    ("    variants: [{template: firm, weight: 2.5}, {template: firm_help, weight: 5}]\n", "    variants:",
     "ladder[2].variants[0].weight: expected a whole number, got 2.5"),
    ("    variants: [{template: firm, wieght: 2}, {template: firm_help, weight: 5}]\n", "    variants:",
     "unknown key 'wieght' in ladder[2].variants[0] (did you mean 'weight'?)"),
])
def test_bad_variants_are_reported_at_their_line(tmp_path: Path, variants: str, needle: str, message: str) -> None:
    found = problems_of(tmp_path, variants)
    assert [(line, text) for line, _col, text in found] == [(line_of(variants, needle), message)]


def test_a_hand_off_step_has_no_variants(tmp_path: Path) -> None:
    text = SHIPPED_TEXT.replace("    handoff: {queue: field, priority: 1, kind: visit}\n",
                                "    handoff: {queue: field, priority: 1, kind: visit}\n"
                                "    variants: [{template: a, weight: 1}, {template: b, weight: 1}]\n")
    path = tmp_path / "schedules.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_schedule(path, {})
    assert [p.message for p in caught.value.problems] == [
        "ladder[6].variants: a hand-off step has no templates to vary"]


def test_every_variant_template_must_exist_and_pass_the_content_rules(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(REPO / "templates", tmp_path / "templates")
    (tmp_path / "templates/firm_help/zh-CN/sms.txt.j2").unlink()
    email = tmp_path / "templates/firm_help/en-US/email.txt.j2"
    email.write_text(email.read_text(encoding="utf-8") + "Pay now or we call the police.\n", encoding="utf-8")
    found = problems_of(tmp_path, SHIPPED_VARIANTS, check=True)
    where = line_of(SHIPPED_VARIANTS, "{template: firm_help")
    col = SHIPPED_VARIANTS.splitlines()[2].index("firm_help") + 1
    missing = [(line, c) for line, c, text in found if "has no file" in text]
    assert missing == [(where, col)]
    assert any("civil-police" in text for _l, _c, text in found)
    assert len(found) == 2


def test_the_shipped_experiment_validates_with_its_templates() -> None:
    from dispatcher.rules.content import template_checks

    loaded = load_schedule(REPO / "schedules.yaml", {}, check_templates=template_checks)
    step = loaded.schedule.step_named("firm")
    assert step is not None and step.variants == [Variant(template="firm", weight=50),
                                                  Variant(template="firm_help", weight=50)]


# the ledger and the commands -------------------------------------------------------------------------------------
@pytest.fixture
def firm_accounts(app: App, clock: FixedClock) -> list[str]:
    """Forty accounts five days overdue: the firm step (email, then SMS on a permanent failure) is due."""
    due = clock().date() - timedelta(days=5)
    ids = [f"V{n:03d}" for n in range(40)]
    seed_rows(app.engine, *(demo_row(i, due) for i in ids))
    return ids


def attempt_rows(app: App) -> list[dict[str, Any]]:
    with app.engine.connect() as connection:
        return [dict(r) for r in connection.execute(select(attempts).order_by(attempts.c.id)).mappings()]


def test_a_run_records_and_renders_each_borrower_s_variant(app: App, clock: FixedClock,
                                                          firm_accounts: list[str]) -> None:
    assert Runner(app).run("manual", clock()).status == "completed"
    step = app.pipeline.loaded.schedule.step_named("firm")
    assert step is not None
    rows = attempt_rows(app)
    assert rows and {r["account_id"] for r in rows} == set(firm_accounts)
    for row in rows:
        assert row["variant"] == step.variant_for(row["account_id"])
        if row["status"] == "sent":
            assert row["template"] == row["variant"]  # the text came from the borrower's variant
    assert {r["variant"] for r in rows} == {"firm", "firm_help"}


def test_a_further_try_keeps_the_variant(app: App, clock: FixedClock, firm_accounts: list[str]) -> None:
    """Its own reminder's variant: the first try of a borrower in the other arm than the ledger's first row."""
    Runner(app).run("manual", clock())
    rows = attempt_rows(app)
    first = next(r for r in rows if r["try_no"] == 1 and r["variant"] not in (None, rows[0]["variant"]))
    now = clock()
    further = {k: first[k] for k in ("reminder_key", "account_id", "step", "occurrence")}
    with app.engine.begin() as connection:
        new_id = insert_try(connection, {**further, "channel": first["channel"], "try_no": first["try_no"] + 1,
                                         "status": "planned", "parent_id": first["id"], "created_at": now,
                                         "updated_at": now})
        fallback_id = insert_try(connection, {**further, "channel": "push", "try_no": 1, "status": "planned",
                                              "parent_id": first["id"], "created_at": now, "updated_at": now})
    found = {r["id"]: r["variant"] for r in attempt_rows(app)}
    assert found[new_id] == found[fallback_id] == first["variant"] is not None


def test_attempts_and_plan_show_the_variant(cli: Cli, app: App, clock: FixedClock, firm_accounts: list[str]) -> None:
    at = clock().isoformat()
    code, out, err = cli("plan", "--format", "json", "--at", at)
    assert code == 0, err
    planned = {r["account_id"]: r["variant"] for r in json.loads(out)}
    step = app.pipeline.loaded.schedule.step_named("firm")
    assert step is not None
    assert planned == {i: step.variant_for(i) for i in firm_accounts}
    Runner(app).run("manual", clock())
    code, out, err = cli("attempts", "--format", "json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed and all(a["variant"] == step.variant_for(a["account_id"]) for a in listed)
    code, out, err = cli("attempts", "--format", "csv")
    assert code == 0 and "variant" in out.splitlines()[0].split(",")
