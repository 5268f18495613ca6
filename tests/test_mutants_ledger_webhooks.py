"""Tests that kill mutants of the reply decisions, the ledger's claim and finish code and the Twilio webhooks.

Each test here guards a promise a surviving mutant of ``scripts/mutate.py`` showed
unguarded (who is contacted, when, how often). The reply table of
``tests/test_optout_words.py`` is run again here under plain ids: mutmut cannot
select its tests again by their ids (they hold backslashes).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select
from test_optout_words import CASES

from dispatcher.ledger import claims
from dispatcher.ledger.claims import GiveBack
from dispatcher.ledger.database import create_ledger_engine, upgrade
from dispatcher.ledger.store import Ledger
from dispatcher.ledger.tables import attempts
from dispatcher.replies.words import Decision, recognise


@pytest.mark.parametrize(("reply", "decision", "keyword"), CASES, ids=[f"case{n}" for n in range(len(CASES))])
def test_every_reply_of_the_table_is_read_as_listed(reply: str, decision: Decision, keyword: str | None) -> None:
    found = recognise(reply)
    assert (found.decision, found.keyword) == (decision, keyword)


# the ledger: a claim given back ---------------------------------------------------------------------------------

NOW = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)


@pytest.fixture
def engine(ledger_url: str) -> Iterator[Engine]:
    built = create_ledger_engine(ledger_url)
    upgrade(built)
    yield built
    built.dispose()


def add_attempts(engine: Engine, *statuses: str) -> list[int]:
    """One attempt row per status (each its own reminder, with a send time from an earlier life); their ids."""
    base = {"account_id": "A", "step": "gentle", "occurrence": 0, "channel": "sms", "try_no": 1,
            "template": "gentle", "created_at": NOW, "updated_at": NOW, "attempted_at": NOW - timedelta(days=1)}
    with engine.begin() as connection:
        for n, status in enumerate(statuses):
            connection.execute(insert(attempts).values(**base, reminder_key=f"K{n}", status=status))
        return [r.id for r in connection.execute(select(attempts.c.id).order_by(attempts.c.id))]


def attempt_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(select(attempts).order_by(attempts.c.id)).mappings()]


def test_a_claim_given_back_is_planned_again_and_only_that_one(engine: Engine) -> None:
    """A claim that never reached a channel goes back to ``planned`` (the next run sends it); nothing else moves."""
    given, other_claim, sending = add_attempts(engine, "planned", "planned", "planned")
    later = NOW + timedelta(minutes=1)
    assert Ledger(engine).start_sending([sending], NOW) == {sending}
    with engine.begin() as connection:
        assert claims.claim(connection, [given, other_claim], NOW) == {given, other_claim}
        claims.give_back(connection, [GiveBack(given), GiveBack(sending)], later)

    rows = {r["id"]: r for r in attempt_rows(engine)}
    assert (rows[given]["status"], rows[given]["attempted_at"], rows[given]["updated_at"]) == ("planned", None, later)
    assert rows[other_claim]["status"] == "claimed"  # not given back: still owned by its deliverer
    assert (rows[sending]["status"], rows[sending]["attempted_at"]) == ("sending", NOW)  # handed over: in doubt


def test_a_held_claim_given_back_keeps_its_reason_and_only_that_one(engine: Engine) -> None:
    """A claim held back (a template that fails) is planned again with why; other claims keep theirs."""
    held, plain, other = add_attempts(engine, "planned", "planned", "planned")
    later = NOW + timedelta(minutes=1)
    with engine.begin() as connection:
        claims.claim(connection, [held, plain, other], NOW)
        claims.give_back(connection, [GiveBack(held, error_code="template", error_class="permanent",
                                               error_message="render failed", rule_id="content"),
                                      GiveBack(plain)], later)

    rows = {r["id"]: r for r in attempt_rows(engine)}
    fields = ("status", "attempted_at", "updated_at", "error_code", "error_class", "error_message", "rule_id")
    assert tuple(rows[held][f] for f in fields) == (
        "planned", None, later, "template", "permanent", "render failed", "content")
    assert tuple(rows[plain][f] for f in fields) == ("planned", None, later, None, None, None, None)
    assert (rows[other]["status"], rows[other]["error_code"]) == ("claimed", None)
