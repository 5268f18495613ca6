"""``dispatcher web`` under hostile or broken conditions, served as ``serve()`` serves it on loopback.

Request bodies: over the size limit gets 413 before it is read, one that does not
arrive within the timeout gets 408, and either way the server closes the
connection; /healthz answers while 200 such uploads hang on. The access log shows
route templates, never an unsubscribe token, a query string or an address. The
unsubscribe page answers 503 (try again), never a traceback, while the ledger is
locked or broken, and the unsubscribe lands once the lock is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FixedClock
from sqlalchemy import create_engine, select
from webserver import serving

from dispatcher.app import App, build_app
from dispatcher.ledger.tables import suppressions
from dispatcher.settings import Settings
from dispatcher.tokens import sign_unsubscribe

SECRET = "test-secret"
EMAIL = "li.na@example.cn"
ACCOUNT = "A-7"
PATIENCE = 30.0
"""Generous bound on any single answer in these tests (a failure, not a measurement)."""


@pytest.fixture
def web_app_env(workdir: Path, clock: FixedClock) -> Iterator[App]:
    """The app ``dispatcher web`` serves, with a 2 s body timeout, the default 64 KiB limit, a secret key."""
    env = {**Settings.from_env().env, "DISPATCHER_WEB_BODY_TIMEOUT": "2", "DISPATCHER_SECRET_KEY": SECRET,
           "DISPATCHER_PUBLIC_URL": "https://lender.example.test"}
    app = build_app(Settings.from_env(env), clock=clock)
    yield app
    app.engine.dispose()


async def exchange(host: str, port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request (perhaps an incomplete one); (status, whole answer) once the server closes."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), PATIENCE)  # up to EOF: the server closed the connection
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1]), answer


def post_head(path: str, length: int | None) -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: lender.example.test\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n{framing}\r\n\r\n")


async def trickle(host: str, port: int, path: str) -> tuple[int, bytes]:
    """A body of 1,000 bytes sent one byte every 0.2 s (never complete within the timeout)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(post_head(path, 1000).encode())

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.2)

    dripping = asyncio.create_task(drip())
    try:
        answer = await asyncio.wait_for(reader.read(), PATIENCE)
    finally:
        dripping.cancel()
        writer.close()
    return int(answer.split(b" ", 2)[1]), answer


GET_HEALTHZ = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def test_idle_oversized_and_trickling_uploads_are_cut_off_while_healthz_answers(web_app_env: App) -> None:
    async def go() -> tuple[list[int], list[int], list[int], int, int]:
        async with serving(web_app_env) as (host, port):
            path = "/unsubscribe/whatever"
            # 100 idle uploads declaring 1 MB: refused from the header alone, after 1 KB of body
            oversized = [asyncio.create_task(exchange(host, port, post_head(path, 1 << 20), b"x" * 1024))
                         for _ in range(100)]
            # 100 uploads under the limit that stop after 100 bytes and stay idle
            idle = [asyncio.create_task(exchange(host, port, post_head(path, 60_000), b"x" * 100))
                    for _ in range(100)]
            tricklers = [asyncio.create_task(trickle(host, port, path)) for _ in range(5)]
            await asyncio.sleep(0)
            health, _ = await exchange(host, port, GET_HEALTHZ)
            results = [await asyncio.gather(*group) for group in (oversized, idle, tricklers)]
            chunked, _ = await exchange(host, port, post_head(path, None),
                                        b"".join(b"4000\r\n" + b"x" * 0x4000 + b"\r\n" for _ in range(5)))
            return *([status for status, _ in group] for group in results), health, chunked

    oversized, idle, tricklers, health, chunked = asyncio.run(go())

    assert health == 200
    assert oversized == [413] * 100
    assert idle == [408] * 100  # and each connection was closed: exchange() read up to EOF
    assert tricklers == [408] * 5  # the timeout is on the whole body, not between bytes
    assert chunked == 413  # 80 KiB chunked: refused once past 64 KiB


def test_a_refused_connection_closes_in_stages_so_a_client_still_sending_is_not_reset(web_app_env: App) -> None:
    """After the refusal and its end of stream, the server still takes what the client sends for a moment.

    Closed at once, the server's kernel would answer those bytes with a reset, and a
    reset that arrives before the client has read the refusal destroys it.
    """
    def ask(host: str, port: int, head: str, body: bytes) -> tuple[bytes, list[str]]:
        with socket.create_connection((host, port)) as client:
            client.settimeout(PATIENCE)
            client.sendall(head.encode() + body)
            answer = b""
            while chunk := client.recv(65536):  # up to the server's end of stream
                answer += chunk
            sent = []
            for _ in range(3):  # the client goes on sending; a reset shows on the next send
                try:
                    client.sendall(b"y" * 100)
                    sent.append("ok")
                except OSError as error:
                    sent.append(type(error).__name__)
                time.sleep(0.2)
            return answer, sent

    async def go() -> list[tuple[bytes, list[str]]]:
        async with serving(web_app_env) as (host, port):
            return list(await asyncio.gather(
                asyncio.to_thread(ask, host, port, post_head("/unsubscribe/x", 1 << 20), b"x" * 1024),
                asyncio.to_thread(ask, host, port, post_head("/unsubscribe/x", 1000), b"x" * 10)))

    (too_large, sent_413), (timed_out, sent_408) = asyncio.run(go())
    assert too_large.startswith(b"HTTP/1.1 413 ") and too_large.endswith(b"request body over 65536 bytes")
    assert timed_out.startswith(b"HTTP/1.1 408 ") and timed_out.endswith(b"request body not received within 2 s")
    assert sent_413 == sent_408 == ["ok"] * 3


def test_a_small_body_within_the_timeout_reaches_the_handler(web_app_env: App) -> None:
    async def go() -> tuple[int, bytes]:
        async with serving(web_app_env) as (host, port):
            body = b"List-Unsubscribe=One-Click"
            return await exchange(host, port, post_head("/unsubscribe/not-a-token", len(body))
                                  .replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n", 1), body)

    status, answer = asyncio.run(go())
    assert status == 403 and b"invalid unsubscribe link" in answer  # the handler read the form and judged it


# -- the access log ---------------------------------------------------------------------------------------------

def test_access_log_shows_route_templates_never_tokens_queries_or_addresses(
    web_app_env: App, caplog: pytest.LogCaptureFixture
) -> None:
    token = sign_unsubscribe(SECRET.encode(), "email", EMAIL, ACCOUNT)
    payload, _, signature = token.partition(".")
    caplog.set_level(logging.DEBUG)

    async def go() -> list[int]:
        async with serving(web_app_env) as (host, port):
            requests = [f"GET /unsubscribe/{token}?utm_source=mail&to={EMAIL} HTTP/1.1",
                        f"POST /unsubscribe/{token} HTTP/1.1",
                        f"GET /unsubscribe/{token}/more HTTP/1.1",
                        f"GET /{token} HTTP/1.1",
                        "GET /healthz?probe=1 HTTP/1.1"]
            return [(await exchange(host, port, f"{line}\r\nHost: x\r\nConnection: close\r\n"
                                                f"Content-Length: 0\r\n\r\n"))[0] for line in requests]

    assert asyncio.run(go()) == [200, 200, 404, 404, 200]
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert [line.rsplit(" ", 1)[0] for line in access] == [
        "GET /unsubscribe/{token} 200", "POST /unsubscribe/{token} 200", "GET /unsubscribe/… (no route) 404",
        "GET /… (no route) 404", "GET /healthz 200"]
    everything = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    for secret in (token, payload, signature, EMAIL, "utm_source", "probe"):
        assert secret not in everything


# -- the unsubscribe page while the ledger is locked or broken ----------------------------------------------------

@contextlib.contextmanager
def write_lock(ledger_url: str) -> Iterator[None]:
    """Another connection holding a write lock on the ledger (SQLite: the database; PostgreSQL: suppressions)."""
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as connection:
            if ledger_url.startswith("sqlite"):
                connection.exec_driver_sql("BEGIN EXCLUSIVE")
            else:
                connection.exec_driver_sql("LOCK TABLE suppressions IN EXCLUSIVE MODE")
            yield
            connection.rollback()
    finally:
        engine.dispose()


def active(app: App) -> list[str]:
    with app.engine.connect() as connection:
        return list(connection.scalars(select(suppressions.c.address).where(suppressions.c.channel == "email",
                                                                              suppressions.c.lifted_at.is_(None))))


async def press(host: str, port: int, token: str) -> tuple[int, bytes]:
    """The reader pressing the page's button (the form's one-click POST)."""
    body = b"List-Unsubscribe=One-Click"
    head = post_head(f"/unsubscribe/{token}", len(body)).replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
    return await exchange(host, port, head, body)


async def landed(app: App) -> list[str]:
    for _ in range(int(PATIENCE / 0.05)):
        found = active(app)
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("the unsubscribe held up by the lock never landed")


def test_unsubscribe_while_the_ledger_is_locked_asks_to_retry_and_lands_once_the_lock_is_gone(
    web_app_env: App, ledger_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = sign_unsubscribe(SECRET.encode(), "email", EMAIL, ACCOUNT)

    async def go() -> tuple[tuple[int, bytes], list[str], tuple[int, bytes]]:
        async with serving(web_app_env) as (host, port):
            with write_lock(ledger_url):
                locked = await press(host, port, token)
            found = await landed(web_app_env)  # the write held up by the lock goes on once it is gone
            return locked, found, await press(host, port, token)  # the reader presses again

    (status, answer), found, (again, page) = asyncio.run(go())
    assert status == 503
    assert b"Retry-After: 60" in answer and "请稍后再试".encode() in answer
    assert b"Traceback" not in answer
    assert found == ["l***@example.cn"]
    assert again == 200 and "已退订".encode() in page
    assert active(web_app_env) == ["l***@example.cn"]  # the second press changed nothing more
    assert EMAIL not in caplog.text


def test_unsubscribe_while_the_ledger_is_broken_asks_to_retry(web_app_env: App) -> None:
    token = sign_unsubscribe(SECRET.encode(), "email", EMAIL, ACCOUNT)
    with web_app_env.engine.begin() as connection:
        connection.execute(suppressions.delete())
        connection.exec_driver_sql("DROP TABLE suppressions")
    async def go() -> tuple[int, bytes]:
        async with serving(web_app_env) as (host, port):
            return await press(host, port, token)

    status, answer = asyncio.run(go())
    assert status == 503 and b"Traceback" not in answer and b"Retry-After: 60" in answer
