"""Provider rate limits (dispatcher/pipeline/ratelimit.py): per process, and shared by all workers through Redis.

Each test uses its own key prefix, so tests never share a limit. Timings are wall-clock:
20 messages a second means 40 acquires take about 2 s (the first goes at once).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from dispatcher.pipeline.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter

T = TypeVar("T")
RATE = 20.0
LIMITS = {"twilio": RATE}
"""``twilio`` is limited to 20/s; ``smtp`` and ``fcm`` have no limit."""

pytestmark = pytest.mark.timeout(60)


def prefix() -> str:
    return f"test:rate:{secrets.token_hex(6)}"


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


async def grant_times(limiter: RateLimiter, provider: str, count: int) -> list[float]:
    """The monotonic time of each of ``count`` sequential acquires."""
    times = []
    for _ in range(count):
        await limiter.acquire(provider)
        times.append(time.monotonic())
    return times


def busiest_second(times: Sequence[float]) -> int:
    """The most grants in any one-second window."""
    ordered = sorted(times)
    return max(sum(1 for t in ordered[i:] if t < start + 1.0) for i, start in enumerate(ordered))


async def redis_limiters(url: str, count: int, limits: dict[str, float] | None = None) -> list[RedisRateLimiter]:
    shared = prefix()  # one prefix: the instances are workers of one deployment
    return [RedisRateLimiter(url, LIMITS if limits is None else limits, prefix=shared) for _ in range(count)]


async def close(limiters: Sequence[RateLimiter]) -> None:
    for limiter in limiters:
        await limiter.aclose()


# the limit ------------------------------------------------------------------------------------------------------
def test_local_limiter_paces_40_acquires_at_20_per_second() -> None:
    async def scenario() -> list[float]:
        started = time.monotonic()
        times = await grant_times(LocalRateLimiter(LIMITS), "twilio", 40)
        return [t - started for t in times]

    times = run(scenario)
    assert times[0] < 0.1  # the first goes at once
    assert 1.7 <= times[-1] < 3.0
    assert busiest_second(times) <= RATE + 1


def test_redis_limiter_paces_40_acquires_at_20_per_second(redis_url: str) -> None:
    async def scenario() -> list[float]:
        (limiter,) = await redis_limiters(redis_url, 1)
        try:
            started = time.monotonic()
            return [t - started for t in await grant_times(limiter, "twilio", 40)]
        finally:
            await close([limiter])

    times = run(scenario)
    assert times[0] < 0.1
    assert 1.7 <= times[-1] < 3.0
    assert busiest_second(times) <= RATE + 1


def test_two_workers_sharing_redis_obey_one_combined_limit_fairly(redis_url: str) -> None:
    """Two limiter instances (two workers) take 20 each: together still 20/s, and neither is starved."""
    async def scenario() -> tuple[float, list[tuple[float, str]]]:
        workers = await redis_limiters(redis_url, 2)
        try:
            started = time.monotonic()
            first, second = await asyncio.gather(*(grant_times(w, "twilio", 20) for w in workers))
            return time.monotonic() - started, sorted([(t, "a") for t in first] + [(t, "b") for t in second])
        finally:
            await close(workers)

    elapsed, grants = run(scenario)
    assert elapsed >= 1.7, f"40 acquires of two workers at 20/s took only {elapsed:.2f} s"
    assert busiest_second([t for t, _ in grants]) <= RATE + 2
    early = [worker for _, worker in grants[:20]]
    assert min(early.count("a"), early.count("b")) >= 4, f"one worker starved: {''.join(early)}"


def test_separate_prefixes_do_not_share_a_limit(redis_url: str) -> None:
    async def scenario() -> float:
        workers = [RedisRateLimiter(redis_url, LIMITS, prefix=prefix()) for _ in range(2)]
        try:
            started = time.monotonic()
            await asyncio.gather(*(grant_times(w, "twilio", 11) for w in workers))
            return time.monotonic() - started
        finally:
            await close(workers)

    assert run(scenario) < 0.9  # 10 intervals of 50 ms each, side by side


# pause ----------------------------------------------------------------------------------------------------------
def test_a_pause_in_one_worker_holds_every_worker_sharing_redis(redis_url: str) -> None:
    """A 429 with Retry-After: 1 in worker A holds that provider in A and B for ~1 s, limited or not.

    A later, shorter pause (0.1 s from B) does not shorten it; an unpaused provider goes on.
    """
    async def scenario() -> dict[str, float]:
        a, b = await redis_limiters(redis_url, 2)
        try:
            await a.pause("twilio", 1.0)
            await a.pause("smtp", 1.0)
            await b.pause("twilio", 0.1)
            started = time.monotonic()

            async def timed(name: str, limiter: RateLimiter, provider: str) -> tuple[str, float]:
                await limiter.acquire(provider)
                return name, time.monotonic() - started

            return dict(await asyncio.gather(timed("a_twilio", a, "twilio"), timed("b_twilio", b, "twilio"),
                                             timed("b_smtp", b, "smtp"), timed("b_fcm", b, "fcm")))
        finally:
            await close([a, b])

    waited = run(scenario)
    for held in ("a_twilio", "b_twilio", "b_smtp"):  # twilio is limited, smtp is not: both held
        assert 0.85 <= waited[held] < 1.6, waited
    assert waited["b_fcm"] < 0.2, waited


def test_local_pause_holds_the_provider_in_this_process() -> None:
    async def scenario() -> tuple[float, float]:
        limiter = LocalRateLimiter(LIMITS)
        await limiter.pause("twilio", 1.0)
        await limiter.pause("smtp", 1.0)
        started = time.monotonic()
        await asyncio.gather(limiter.acquire("twilio"), limiter.acquire("smtp"))
        both = time.monotonic() - started
        started = time.monotonic()
        await limiter.acquire("fcm")
        return both, time.monotonic() - started

    both, other = run(scenario)
    assert 0.9 <= both < 1.5
    assert other < 0.05


# no limit -------------------------------------------------------------------------------------------------------
def test_an_unlimited_provider_is_not_delayed(redis_url: str) -> None:
    async def scenario() -> tuple[float, float]:
        (shared,) = await redis_limiters(redis_url, 1)
        local = LocalRateLimiter(LIMITS)
        try:
            started = time.monotonic()
            await grant_times(local, "smtp", 500)
            local_elapsed = time.monotonic() - started
            started = time.monotonic()
            await grant_times(shared, "fcm", 200)
            return local_elapsed, time.monotonic() - started
        finally:
            await close([shared, local])

    local_elapsed, redis_elapsed = run(scenario)
    assert local_elapsed < 0.1
    assert redis_elapsed < 1.0  # one PTTL round trip each, no waiting


def test_redis_limiter_holds_a_rate_above_1000_per_second(redis_url: str) -> None:
    rate = 1100.0

    async def scenario() -> float:
        (limiter,) = await redis_limiters(redis_url, 1, {"fcm": rate})
        try:
            started = time.monotonic()
            await grant_times(limiter, "fcm", int(rate))
            return time.monotonic() - started
        finally:
            await close([limiter])

    elapsed = run(scenario)
    assert elapsed >= 0.9, f"{int(rate)} acquires at {rate:g}/s took {elapsed:.2f} s"
