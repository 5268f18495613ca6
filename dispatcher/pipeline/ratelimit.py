"""Rate limits per provider, shared by every worker through Redis (or local to one process).

``acquire(provider)`` waits until the provider may take one more message;
``pause(provider, seconds)`` holds every sender back (a 429 with Retry-After slows
that provider for all workers). Limits are messages per second from
``delivery.rate_limits`` in schedules.yaml; a provider without one is not limited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PAUSE_CHECK_EVERY = 0.25
"""Seconds between two looks at a provider's shared pause when it has no rate limit (one per message
would cost a Redis round trip each)."""

WARN_EVERY = 30.0
"""Seconds between two warnings that Redis is unavailable."""

# GCRA (generic cell rate algorithm): one key per provider holding its "theoretical arrival time",
# in integer microseconds (Redis truncates a Lua number it returns, so milliseconds would round
# every rate above 1000/s to "unlimited"). Each call reserves the next slot, first come first
# served, and returns -(wait until that slot) - 1; while the provider is paused it reserves
# nothing and returns the pause left (positive): the caller asks again after it.
_GCRA = """
local key, pause_key = KEYS[1], KEYS[2]
local interval, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local paused = redis.call('PTTL', pause_key)
if paused > 0 then return paused * 1000 end
local tat = tonumber(redis.call('GET', key) or '0')
if tat < now then tat = now end
redis.call('SET', key, tat + interval, 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
return -(tat - now) - 1
"""


class RateLimiter(Protocol):
    """What the deliverer calls around each provider request."""

    async def acquire(self, provider: str) -> None: ...

    async def pause(self, provider: str, seconds: float) -> None: ...

    async def aclose(self) -> None: ...


class LocalRateLimiter:
    """Limits within one process (in-process execution, no broker)."""

    def __init__(self, limits: Mapping[str, float]) -> None:
        self.limits = dict(limits)
        self._next: dict[str, float] = {}
        self._paused_until: dict[str, float] = {}

    async def acquire(self, provider: str) -> None:
        rate = self.limits.get(provider)
        while True:
            now = time.monotonic()
            wait = self._paused_until.get(provider, 0.0) - now
            if rate:
                slot = max(self._next.get(provider, 0.0), now)
                wait = max(wait, slot - now)
                if wait <= 0:
                    self._next[provider] = slot + 1.0 / rate
                    return
            elif wait <= 0:
                return
            await asyncio.sleep(wait)

    async def pause(self, provider: str, seconds: float) -> None:
        self._paused_until[provider] = max(self._paused_until.get(provider, 0.0), time.monotonic() + seconds)

    async def aclose(self) -> None:
        return None


class RedisRateLimiter:
    """Limits shared by every worker on every machine, kept in Redis."""

    def __init__(self, url: str, limits: Mapping[str, float], prefix: str = "dispatcher:rate") -> None:
        self.limits = dict(limits)
        self.prefix = prefix
        self._redis: Redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._script = self._redis.register_script(_GCRA)
        self._warned = 0.0
        self._pause_seen: dict[str, tuple[float, float]] = {}

    async def acquire(self, provider: str) -> None:
        try:
            await self._acquire(provider)
        except RedisError as exc:  # Redis away (restarting): send unthrottled rather than not at all
            self._warn(exc)

    async def pause(self, provider: str, seconds: float) -> None:
        try:
            await self._pause(provider, seconds)
        except RedisError as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned > WARN_EVERY:
            self._warned = now
            log.warning("shared rate limits unavailable (%s); sending without them until Redis is back", exc)

    async def _acquire(self, provider: str) -> None:
        rate = self.limits.get(provider)
        keys = [f"{self.prefix}:{provider}", f"{self.prefix}:{provider}:pause"]
        interval_us = max(1, round(1_000_000 / rate)) if rate else 0
        while True:
            if not rate:
                paused_us = await self._paused_us(provider, keys[1])
                if paused_us <= 0:
                    return
                await asyncio.sleep(paused_us / 1_000_000)
                continue
            answer = int(await self._script(keys=keys, args=[interval_us, int(time.time() * 1_000_000)]))
            if answer < 0:  # a slot is reserved: wait for it
                await asyncio.sleep((-answer - 1) / 1_000_000)
                return
            await asyncio.sleep(answer / 1_000_000)

    async def _paused_us(self, provider: str, key: str) -> int:
        """The pause left on an unlimited provider, asked of Redis at most every PAUSE_CHECK_EVERY seconds."""
        now = time.monotonic()
        checked_at, until = self._pause_seen.get(provider, (-PAUSE_CHECK_EVERY, 0.0))
        if now - checked_at >= PAUSE_CHECK_EVERY:
            self._pause_seen[provider] = (now, until)  # before the await: the sends meanwhile do not ask too
            left_ms = int(await self._redis.pttl(key))
            until = now + left_ms / 1000 if left_ms > 0 else 0.0
            self._pause_seen[provider] = (now, until)
        return int(max(0.0, until - now) * 1_000_000)

    async def _pause(self, provider: str, seconds: float) -> None:
        millis = max(1, int(seconds * 1000))
        key = f"{self.prefix}:{provider}:pause"
        self._pause_seen[provider] = (time.monotonic(), time.monotonic() + seconds)
        current = int(await self._redis.pttl(key))
        if current < millis:
            await self._redis.set(key, "1", px=millis)

    async def aclose(self) -> None:
        await self._redis.aclose()
