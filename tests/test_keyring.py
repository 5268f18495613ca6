"""Rotating ``DISPATCHER_SECRET_KEY`` as a key ring: ``new,old`` signs with new and accepts both; ``new`` alone
refuses what old signed. Unsubscribe tokens (also through ``dispatcher web``), pay links and the call menu."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import FixedClock

from dispatcher.app import build_app
from dispatcher.channels.voice_script import CallScript, MenuState
from dispatcher.keyring import ring, signing_key
from dispatcher.pay_links import pay_link_signature, pay_link_valid
from dispatcher.settings import Settings
from dispatcher.tokens import sign_unsubscribe, verify_unsubscribe
from dispatcher.web.server import build_web_app

OLD, NEW = b"old-secret-2025", b"new-secret-2026"
ROTATED, RETIRED = NEW + b"," + OLD, NEW
LINK = ("L00000001", "500.00", "CNY", "2026-03-01")


def test_the_ring_is_the_listed_keys_newest_first() -> None:
    assert ring(b"one") == (b"one",)
    assert ring(b" with spaces ") == (b" with spaces ",)  # one key: used exactly as written, as before
    assert ring(b"new, old,") == (b"new", b"old")
    assert ring(b"") == ()
    assert signing_key(ROTATED) == NEW
    with pytest.raises(ValueError):
        signing_key(b" , ")


def test_an_unsubscribe_token_survives_a_rotation_until_its_key_is_retired() -> None:
    before = sign_unsubscribe(OLD, "email", "a@example.com", "acct-1")
    assert verify_unsubscribe(ROTATED, before) is not None
    assert verify_unsubscribe(RETIRED, before) is None
    after = sign_unsubscribe(ROTATED, "email", "a@example.com", "acct-1")
    assert verify_unsubscribe(NEW, after) is not None  # signed with the first key ...
    assert verify_unsubscribe(OLD, after) is None  # ... not the old one
    assert sign_unsubscribe(ROTATED, "email", "a@example.com", "acct-1", issued_at=1) == \
        sign_unsubscribe(NEW, "email", "a@example.com", "acct-1", issued_at=1)


def test_a_pay_link_is_signed_with_the_first_key_and_checked_with_every_key() -> None:
    old = pay_link_signature(OLD, *LINK)
    assert pay_link_signature(ROTATED, *LINK) == pay_link_signature(NEW, *LINK) != old
    assert pay_link_valid(ROTATED, old, *LINK)
    assert pay_link_valid(ROTATED, pay_link_signature(ROTATED, *LINK), *LINK)
    assert not pay_link_valid(RETIRED, old, *LINK)
    assert not pay_link_valid(ROTATED, old, "L00000002", *LINK[1:])


def test_a_call_menu_sealed_before_a_rotation_still_opens() -> None:
    state = MenuState("en-US", "You owe 500.00 CNY.", "+14155550100")
    sealed = CallScript("https://x.test/menu", OLD).seal(state)
    assert CallScript("https://x.test/menu", ROTATED).open(sealed) == state
    assert CallScript("https://x.test/menu", RETIRED).open(sealed) is None
    fresh = CallScript("https://x.test/menu", ROTATED).seal(state)
    assert CallScript("https://x.test/menu", NEW).open(fresh) == state
    assert CallScript("https://x.test/menu", OLD).open(fresh) is None


def status_of(secret: bytes, token: str, clock: FixedClock) -> int:
    env = {**Settings.from_env().env, "DISPATCHER_SECRET_KEY": secret.decode(),
           "DISPATCHER_PUBLIC_URL": "https://lender.example.test"}
    app = build_app(Settings.from_env(env), clock=clock)

    async def fetch() -> int:
        async with TestClient(TestServer(build_web_app(app))) as client:
            return (await client.get(f"/unsubscribe/{token}")).status

    try:
        return asyncio.run(fetch())
    finally:
        app.engine.dispose()


def test_dispatcher_web_accepts_links_of_every_key_in_the_ring(workdir: Path, clock: FixedClock) -> None:
    token = sign_unsubscribe(OLD, "email", "a@example.com", "acct-1")
    assert status_of(OLD, token, clock) == 200
    assert status_of(ROTATED, token, clock) == 200
    assert status_of(RETIRED, token, clock) == 403
