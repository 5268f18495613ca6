"""Work items pushed to a CRM (``DISPATCHER_CRM_URL``): signed JSON, retried like a provider, never twice opened;
and the hand-off channel answering the reconciler."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import FixedClock
from rows import attempt_rows, seed_rows
from sqlalchemy import event, select
from standins import HttpStandin, Recorded, Reply
from test_handoffs import borrower, handoff_rows, local_today, run, with_handoff_ladder

from dispatcher.app import App, build_app
from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Message
from dispatcher.channels.handoff import SIGNATURE_HEADER, CrmSettings, HandoffChannel
from dispatcher.errors import ConfigError
from dispatcher.ledger.tables import handoff_events
from dispatcher.masking import mask_phone
from dispatcher.settings import Settings

SECRET = "crm-secret-9d3e"


class CrmStandin(HttpStandin):
    """A CRM endpoint answering each request with the next scripted status (then 201)."""

    def __init__(self, *statuses: int) -> None:
        super().__init__()
        self.statuses = list(statuses)

    def respond(self, request: Recorded) -> Reply:
        status = self.statuses.pop(0) if self.statuses else 201
        return Reply(status, {"ok": status < 300}, {"Retry-After": "0"} if status >= 500 else {})


def crm_app(workdir: Path, clock: FixedClock, crm: CrmStandin) -> App:
    with_handoff_ladder(workdir / "schedules.yaml")
    env = {**Settings.from_env().env, "DISPATCHER_CRM_URL": f"{crm.url}/work-items", "DISPATCHER_CRM_SECRET": SECRET}
    app = build_app(Settings.from_env(env), clock=clock)
    seed_rows(app.engine, borrower("H-1", local_today(clock) - timedelta(days=40), 1))
    return app


@pytest.fixture
def crm() -> Iterator[CrmStandin]:
    with CrmStandin() as server:
        yield server


def events(app: App) -> list[tuple[str, str]]:
    query = select(handoff_events.c.action, handoff_events.c.detail).order_by(handoff_events.c.id)
    with app.engine.connect() as connection:
        return [(r.action, r.detail or "") for r in connection.execute(query)]


def test_each_work_item_is_pushed_once_as_signed_json(workdir: Path, clock: FixedClock, crm: CrmStandin) -> None:
    app = crm_app(workdir, clock, crm)
    try:
        run(app, clock)
        run(app, clock)  # nothing new: nothing pushed again
        (item,) = handoff_rows(app)
        (request,) = crm.requests
        assert (request.method, request.path) == ("POST", "/work-items")
        expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers[SIGNATURE_HEADER], expected)
        assert request.headers["Idempotency-Key"] == f"handoff-{item['id']}"
        assert request.json() == {
            "id": item["id"], "account_id": "H-1", "reminder_key": item["reminder_key"], "step": "agents",
            "queue": "agents", "priority": 2, "kind": "call", "phone": mask_phone("+8613812340001"),
            "due_date": item["due_date"].isoformat()}
        assert [action for action, _ in events(app)] == ["opened", "pushed"]
    finally:
        app.engine.dispose()


def test_a_crm_failing_for_a_while_gets_the_same_work_item_again(workdir: Path, clock: FixedClock) -> None:
    with CrmStandin(503) as crm:
        app = crm_app(workdir, clock, crm)
        try:
            run(app, clock)
            (item,) = handoff_rows(app)
            assert [r.headers["Idempotency-Key"] for r in crm.requests] == [f"handoff-{item['id']}"] * 2
            assert [(a["try_no"], a["status"], a["error_code"]) for a in attempt_rows(app, channel="handoff")] == [
                (1, "failed", "503"), (2, "sent", None)]
            assert [action for action, _ in events(app)] == ["opened", "push_failed", "pushed"]
        finally:
            app.engine.dispose()


def test_a_crm_refusing_the_work_item_fails_the_attempt_and_the_item_stays_open(workdir: Path,
                                                                                clock: FixedClock) -> None:
    with CrmStandin(422) as crm:
        app = crm_app(workdir, clock, crm)
        try:
            run(app, clock)
            ((attempt, item),) = zip(attempt_rows(app, channel="handoff"), handoff_rows(app), strict=True)
            assert (attempt["status"], attempt["error_class"], attempt["error_code"]) == ("failed", "permanent", "422")
            assert item["status"] == "open"
            assert events(app)[-1] == ("push_failed", "422: the CRM refused the work item (422)")
        finally:
            app.engine.dispose()


def test_the_channel_tells_the_reconciler_which_attempt_opened_and_pushed_a_work_item(
        workdir: Path, clock: FixedClock, crm: CrmStandin) -> None:
    app = crm_app(workdir, clock, crm)
    try:
        run(app, clock)
        (item,) = handoff_rows(app)

        async def ask() -> list[str | None]:
            ledger_only = HandoffChannel(app.engine, clock)
            with_crm = app.channels()[ChannelKind.HANDOFF]
            assert isinstance(with_crm, HandoffChannel)
            try:
                return [await ledger_only.find_attempt(item["attempt_id"]), await ledger_only.find_attempt(10**6),
                        await with_crm.find_attempt(item["attempt_id"])]
            finally:
                await with_crm.aclose()

        assert asyncio.run(ask()) == [f"handoff:{item['id']}", None, f"handoff:{item['id']}"]
        with app.engine.begin() as connection:  # opened, never pushed (a crash between the two): asked again
            connection.execute(handoff_events.delete().where(handoff_events.c.action == "pushed"))
        pushing = HandoffChannel(app.engine, clock, app.providers.crm)
        assert asyncio.run(pushing.find_attempt(item["attempt_id"])) is None
    finally:
        app.engine.dispose()


@pytest.mark.parametrize(("env", "message"), [
    ({"DISPATCHER_CRM_URL": "https://crm.example.test/in"}, "DISPATCHER_CRM_SECRET: required when DISPATCHER_CRM_URL"),
    ({"DISPATCHER_CRM_URL": "crm.example.test", "DISPATCHER_CRM_SECRET": "s"}, "DISPATCHER_CRM_URL: 'crm.example.test' "
     "is not an http(s) URL"),
    ({"DISPATCHER_CRM_URL": "https://crm.example.test", "DISPATCHER_CRM_SECRET": "s", "DISPATCHER_CRM_TIMEOUT": "0"},
     "DISPATCHER_CRM_TIMEOUT: '0' is not valid"),
])
def test_a_wrong_crm_setting_is_refused_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        CrmSettings.from_env(env)
    assert message in str(refused.value)
    assert CrmSettings.from_env({}) is None


def test_hand_offs_sent_together_are_opened_in_one_transaction(workdir: Path, clock: FixedClock) -> None:
    """Concurrent hand-offs share one commit (they held the write lock one commit each); the same reminder's
    second send in that transaction finds its work item."""
    app = build_app(Settings.from_env(), clock=clock)
    commits: list[int] = []
    event.listen(app.engine, "commit", lambda _connection: commits.append(1))

    def message(n: int, key: str) -> Message:
        return Message(attempt_id=100 + n, reminder_key=key, account_id=f"H-{n}", channel=ChannelKind.HANDOFF,
                       to=f"H-{n}", body="", data={"step": "call", "queue": "collections", "priority": "2",
                                                    "kind": "call", "due_date": "2026-10-01"})

    async def send_together() -> list[str | None]:
        channel = HandoffChannel(app.engine, clock)
        sent = await asyncio.gather(*(channel.send(message(n, f"H-{n}|2026-10-01|call|0")) for n in range(5)),
                                    channel.send(message(0, "H-0|2026-10-01|call|0")))
        return [result.provider_message_id for result in sent]

    try:
        ids = asyncio.run(send_together())
        items = handoff_rows(app)
        assert len(commits) == 1
        assert [item["reminder_key"] for item in items] == [f"H-{n}|2026-10-01|call|0" for n in range(5)]
        assert ids == [f"handoff:{item['id']}" for item in items] + [f"handoff:{items[0]['id']}"]
        assert [action for action, _detail in events(app)] == ["opened"] * 5
    finally:
        app.engine.dispose()
