"""``/api/handoffs`` on ``dispatcher web``: served only with ``DISPATCHER_API_TOKEN``, behind its bearer token;
list, show, claim and close work items with the same rules as the command line."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import FixedClock
from rows import seed_rows
from sqlalchemy import select
from test_handoffs import borrower, handoff_rows, local_today, run, with_handoff_ladder
from webserver import serving

from dispatcher.app import App, build_app
from dispatcher.ledger.tables import handoffs
from dispatcher.settings import Settings

TOKEN = "api-token-4f1c2a"


def handoff_app(workdir: Path, clock: FixedClock, **env: str) -> App:
    """The app ``dispatcher web`` serves, on the hand-off ladder, with two work items opened by a run."""
    with_handoff_ladder(workdir / "schedules.yaml")
    app = build_app(Settings.from_env({**Settings.from_env().env, **env}), clock=clock)
    today = local_today(clock)
    seed_rows(app.engine, borrower("H-1", today - timedelta(days=40), 1),
              borrower("H-2", today - timedelta(days=33), 2))
    run(app, clock)
    return app


@pytest.fixture
def api_app(workdir: Path, clock: FixedClock) -> Iterator[App]:
    app = handoff_app(workdir, clock, DISPATCHER_API_TOKEN=TOKEN)
    yield app
    app.engine.dispose()


Call = tuple[str, str, dict[str, Any] | str | None, str | None]
"""(method, path, JSON body or raw text, bearer token)."""


async def _call(base: str, session: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | str | None,
                token: str | None) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
    async with session.request(method, base + path, headers=headers, **kwargs) as response:
        text = await response.text()
        is_json = response.content_type == "application/json"
        return response.status, (await response.json() if is_json else text), dict(response.headers)


def calls(app: App, *requests: Call) -> list[tuple[int, Any, dict[str, str]]]:
    """Each request's (status, JSON or text, headers), in order, against ``app``'s web app."""

    async def go() -> list[tuple[int, Any, dict[str, str]]]:
        async with serving(app) as (host, port), aiohttp.ClientSession() as session:
            return [await _call(f"http://{host}:{port}", session, *request) for request in requests]

    return asyncio.run(go())


def test_without_a_configured_token_there_is_no_api(workdir: Path, clock: FixedClock) -> None:
    app = handoff_app(workdir, clock)
    try:
        answers = calls(app, ("GET", "/api/handoffs", None, None), ("GET", "/api/handoffs", None, TOKEN),
                        ("POST", "/api/handoffs/1/claim", {"agent": "a"}, TOKEN))
        assert [status for status, _, _ in answers] == [404, 404, 404]
    finally:
        app.engine.dispose()


def test_a_missing_or_wrong_token_gets_401_and_changes_nothing(api_app: App) -> None:
    answers = calls(api_app, ("GET", "/api/handoffs", None, None), ("GET", "/api/handoffs", None, TOKEN + "x"),
                    ("POST", "/api/handoffs/1/claim", {"agent": "mallory"}, "nope"),
                    ("POST", "/api/handoffs/1/close", {"outcome": "paid", "agent": "mallory"}, None))
    assert [status for status, _, _ in answers] == [401, 401, 401, 401]
    assert answers[0][2]["WWW-Authenticate"] == 'Bearer realm="handoffs"'
    assert {i["status"] for i in handoff_rows(api_app)} == {"open"}


def test_list_filters_claim_and_close_through_the_api(api_app: App) -> None:
    ids = {i["account_id"]: i["id"] for i in handoff_rows(api_app)}
    first, second = ids["H-1"], ids["H-2"]
    answers = calls(
        api_app,
        ("GET", "/api/handoffs", None, TOKEN),
        ("POST", f"/api/handoffs/{first}/claim", {"agent": "alice"}, TOKEN),
        ("GET", "/api/handoffs?status=claimed", None, TOKEN),
        ("GET", "/api/handoffs?status=open&queue=agents", None, TOKEN),
        ("GET", "/api/handoffs?queue=legal", None, TOKEN),
        ("POST", f"/api/handoffs/{first}/close",
         {"outcome": "promise_to_pay", "until": "2026-03-20", "note": "pays on payday"}, TOKEN),
        ("GET", f"/api/handoffs/{first}", None, TOKEN),
        ("POST", f"/api/handoffs/{second}/close", {"outcome": "visit_done", "agents": ["x", "y"]}, TOKEN),
    )
    assert [status for status, _, _ in answers] == [200] * 8
    listing = answers[0][1]["handoffs"]
    assert [i["id"] for i in listing] == sorted(ids.values())  # same priority: the oldest first
    assert sorted((i["account_id"], i["status"], i["queue"], i["priority"], i["kind"]) for i in listing) == [
        ("H-1", "open", "agents", 2, "call"), ("H-2", "open", "agents", 2, "call")]
    assert "phone_hash" not in listing[0] and listing[0]["phone"].count("*") == 4
    assert (answers[1][1]["status"], answers[1][1]["claimed_by"]) == ("claimed", "alice")
    assert [i["id"] for i in answers[2][1]["handoffs"]] == [first]
    assert [i["id"] for i in answers[3][1]["handoffs"]] == [second]
    assert answers[4][1] == {"handoffs": []}
    closed = answers[5][1]
    assert (closed["status"], closed["outcome"], closed["until"], closed["closed_by"], closed["agents"]) == (
        "closed", "promise_to_pay", "2026-03-20", "alice", ["alice"])
    assert [(e["action"], e["actor"]) for e in answers[6][1]["events"]] == [
        ("opened", "dispatcher"), ("claimed", "alice"), ("closed", "alice")]
    assert answers[7][1]["agents"] == ["x", "y"]
    with api_app.engine.connect() as connection:
        assert dict(connection.execute(select(handoffs.c.id, handoffs.c.outcome)).all()) == {
            first: "promise_to_pay", second: "visit_done"}


@pytest.mark.parametrize(("request_", "status", "error"), [
    (("POST", "/api/handoffs/{id}/close", {"outcome": "visit_done", "agents": ["x"]}), 400,
     "a field visit is made by at least 2 collectors: name each with --agent (1 given)"),
    (("POST", "/api/handoffs/{id}/close", {"outcome": "promise_to_pay", "agent": "a"}), 400,
     "a promise_to_pay needs the day it holds until (--until DATE)"),
    (("POST", "/api/handoffs/{id}/close", {"outcome": "sold", "agent": "a"}), 400, "outcome 'sold' is not one of"),
    (("POST", "/api/handoffs/{id}/close", {"outcome": "paid", "agents": "a"}), 400, "agents must be a list of names"),
    (("POST", "/api/handoffs/{id}/claim", "not json"), 400, "the body is not JSON"),
    (("POST", "/api/handoffs/{id}/claim", {}), 400, "name the agent who claims it"),
    (("POST", "/api/handoffs/999/claim", {"agent": "a"}), 404, "hand-off #999 does not exist"),
    (("GET", "/api/handoffs/999", None), 404, "hand-off #999 does not exist"),
    (("GET", "/api/handoffs?status=lost", None), 400, "status 'lost' is not one of open, claimed, closed"),
    (("GET", "/api/handoffs?limit=0", None), 400, "limit '0' is not a number from 1 to 1000"),
])
def test_refusals_are_json_errors_with_their_status(api_app: App, request_: tuple[str, str, Any], status: int,
                                                    error: str) -> None:
    method, path, body = request_
    item = handoff_rows(api_app)[0]["id"]
    ((got, answer, _),) = calls(api_app, (method, path.replace("{id}", str(item)), body, TOKEN))
    assert got == status and error in answer["error"]
    assert {i["status"] for i in handoff_rows(api_app)} == {"open"}


def test_bad_transitions_are_409(api_app: App) -> None:
    item = handoff_rows(api_app)[0]["id"]
    answers = calls(api_app, ("POST", f"/api/handoffs/{item}/claim", {"agent": "alice"}, TOKEN),
                    ("POST", f"/api/handoffs/{item}/claim", {"agent": "bob"}, TOKEN),
                    ("POST", f"/api/handoffs/{item}/close", {"outcome": "contacted"}, TOKEN),
                    ("POST", f"/api/handoffs/{item}/close", {"outcome": "paid", "agent": "alice"}, TOKEN),
                    ("POST", f"/api/handoffs/{item}/claim", {"agent": "alice"}, TOKEN))
    assert [status for status, _, _ in answers] == [200, 409, 200, 409, 409]
    assert answers[1][1] == {"error": f"hand-off #{item} is claimed by alice"}
    assert answers[2][1]["closed_by"] == "alice"  # closed by who claimed it
    assert answers[4][1] == {"error": f"hand-off #{item} is closed (contacted, by alice): it cannot be claimed"}


def test_a_locked_ledger_answers_503_with_retry_after(api_app: App, ledger_backend: str) -> None:
    if ledger_backend != "sqlite":
        pytest.skip("locks the SQLite file")
    item = handoff_rows(api_app)[0]["id"]
    locker = api_app.engine.connect()

    async def go() -> tuple[int, Any, dict[str, str]]:
        async with serving(api_app) as (host, port), aiohttp.ClientSession() as session:
            try:
                return await _call(f"http://{host}:{port}", session, "POST", f"/api/handoffs/{item}/claim",
                                   {"agent": "a"}, TOKEN)
            finally:  # the claim still waiting for the lock may land now: a slow write is not lost
                locker.rollback()

    locker.exec_driver_sql("BEGIN EXCLUSIVE")
    try:
        status, answer, headers = asyncio.run(go())
    finally:
        locker.close()
    assert (status, answer, headers["Retry-After"]) == (503, {"error": "the ledger cannot answer now; try again"}, "30")
