"""Delivery: claim → render → send → record, with retries and fallback around the channel call.

The same code runs in the daemon's process and inside Celery workers. A job's
attempt is claimed by a conditional update (``planned → sending``) before any
provider is called, so a job handed out twice is sent once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from dispatcher.channels.base import (
    AMBIGUOUS_ERRORS,
    Channel,
    ChannelKind,
    DeliveryResult,
    Effect,
    Message,
    Outcome,
    SentLookup,
)
from dispatcher.compose.renderer import Composer, RenderContext, Rendered
from dispatcher.errors import DeliveryError, TemplateError
from dispatcher.history import borrower_key
from dispatcher.jobs import DeliveryJob, RunCounts
from dispatcher.ledger.store import AttemptOutcome, Ledger
from dispatcher.ledger.suppressions import suppress
from dispatcher.masking import address_hash, mask_address
from dispatcher.planner import address_for
from dispatcher.ratelimit import LocalRateLimiter, RateLimiter
from dispatcher.rules.base import Block
from dispatcher.rules.content import ContentCheck
from dispatcher.rules.recheck import BatchFacts, SendCheck
from dispatcher.schedule.models import Schedule

log = logging.getLogger(__name__)

DEFAULT_BACKOFF_BASE = 1.0
"""Seconds before the second try; doubled for each further try, with jitter."""

LOOKUP_SLACK = timedelta(minutes=1)
"""How far before a timed-out try the provider's message list is searched (clock skew)."""

DEFAULT_BACKOFF_CAP = 60.0
"""The longest wait between two tries of one message inside a run."""

_SUPPRESSION_SOURCE = {Effect.OPTED_OUT: "provider_opt_out", Effect.BAD_ADDRESS: "bad_address",
                       Effect.DEAD_TOKEN: "dead_token"}

Clock = Callable[[], datetime]
HeadersFor = Callable[[DeliveryJob], tuple[str | None, Mapping[str, str]]]
"""Given a job: its one-click unsubscribe URL (or None) and extra message headers."""


def backoff_delay(try_no: int, retry_after: float | None, *, base: float = DEFAULT_BACKOFF_BASE,
                  cap: float = DEFAULT_BACKOFF_CAP, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter after try ``try_no``; never shorter than the provider's Retry-After."""
    jitter: float = (rng or random).uniform(0.5, 1.0)
    delay = min(cap, base * 2.0 ** (try_no - 1)) * jitter
    return min(cap, max(delay, retry_after or 0.0))


@dataclass(frozen=True)
class DeliveryPolicy:
    """Bounds of delivery: messages in flight, tries per message (per channel), waits between tries."""

    concurrency: int = 32
    max_tries: int = 3
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    tries: Mapping[ChannelKind, int] = field(default_factory=dict)

    def tries_for(self, channel: ChannelKind) -> int:
        return self.tries.get(channel, self.max_tries)


@dataclass
class _Batch:
    """What delivering one batch produced, written to the ledger in a few statements at the end."""

    outcomes: list[AttemptOutcome] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    deferrals: list[dict[str, Any]] = field(default_factory=list)
    counts: RunCounts = field(default_factory=RunCounts)
    touched: set[int] = field(default_factory=set)  # attempts handed to a provider: never released


class Deliverer:
    """Delivers batches of jobs through the configured channels and records every try."""

    def __init__(self, ledger: Ledger, composer: Composer, schedule: Schedule,
                 channels: Mapping[ChannelKind, Channel], *, policy: DeliveryPolicy, clock: Clock,
                 headers_for: HeadersFor | None = None, send_check: SendCheck | None = None,
                 content_check: ContentCheck | None = None, limiter: RateLimiter | None = None,
                 stopping: threading.Event | None = None) -> None:
        self.ledger = ledger
        self.composer = composer
        self.schedule = schedule
        self.channels = channels
        self.policy = policy
        self.clock = clock
        self.headers_for = headers_for
        self.send_check = send_check
        self.content_check = content_check
        self.limiter = limiter or LocalRateLimiter({})
        self.stopping = stopping or threading.Event()

    async def deliver(self, jobs: Sequence[DeliveryJob]) -> RunCounts:
        """Claim the batch, re-check it, send what may go out concurrently, record every outcome."""
        batch = _Batch()
        claimed = self.ledger.start_sending([job.attempt_id for job in jobs], self.clock())
        mine = [job for job in jobs if job.attempt_id in claimed]
        batch.counts.skipped = len(jobs) - len(mine)
        limit = asyncio.Semaphore(self.policy.concurrency)
        try:
            facts = self.send_check.facts(mine, self.clock()) if self.send_check and mine else None
            ready = [_as_reread(job, facts) for job in mine
                     if self._blocked(job, job.channel, job.address, facts, batch) is None]
            await asyncio.gather(*(self._guarded(job, limit, batch, facts) for job in ready))
        except BaseException:  # e.g. the source cannot be re-read: give back every claim no provider saw
            batch.released.extend(job.attempt_id for job in mine if job.attempt_id not in batch.touched)
            raise
        finally:  # whatever happened, what was sent is recorded and what was not is given back
            self._record(batch)
        return batch.counts

    async def _guarded(self, job: DeliveryJob, limit: asyncio.Semaphore, batch: _Batch,
                       facts: BatchFacts | None) -> None:
        """One job; an unexpected error gives its claim back unless a provider already had the message."""
        try:
            await self._deliver_job(job, limit, batch, facts)
        except Exception:
            log.exception("attempt %s (%s, %s) failed unexpectedly", job.attempt_id, job.account.account_id,
                          job.channel.value)
            if job.attempt_id not in batch.touched:
                batch.released.append(job.attempt_id)

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()
        await self.limiter.aclose()

    def _record(self, batch: _Batch) -> None:
        now = self.clock()
        self.ledger.finish_attempts(batch.outcomes, now)
        self.ledger.record_decisions(batch.deferrals)
        if batch.released:
            self.ledger.release(batch.released, now)

    def _blocked(self, job: DeliveryJob, channel: ChannelKind, address: str, facts: BatchFacts | None,
                 batch: _Batch, *, fallback: bool = False) -> Block | None:
        """Re-check ``job`` on ``channel``; a refusal is recorded (suppressed, or deferred and released)."""
        if self.send_check is None or facts is None:
            return None
        block = self.send_check.check(job, channel, address, facts, self.clock(), fallback=fallback)
        if block is None:
            return None
        log.info("attempt %s (%s, %s) held back before sending: %s: %s", job.attempt_id,
                 job.account.account_id, channel.value, block.rule_id, block.detail)
        if block.defer:
            batch.released.append(job.attempt_id)
            batch.deferrals.append(_deferral(job, channel, block, self.clock()))
            batch.counts.deferred += 1
        else:
            batch.outcomes.append(AttemptOutcome(job.attempt_id, "suppressed", rule_id=block.rule_id,
                                                 detail=block.detail))
            batch.counts.suppressed += 1
        return block

    async def _deliver_job(self, job: DeliveryJob, limit: asyncio.Semaphore, batch: _Batch,
                           facts: BatchFacts | None) -> None:
        """Sends one job (retries, then fallback); a stop before sending gives the claim back."""
        if self.stopping.is_set():
            batch.released.append(job.attempt_id)
            return
        current: DeliveryJob | None = job
        while current is not None:
            result = await self._send_with_retries(current, limit, batch)
            current = self._fallback(current, result, facts, batch)

    async def _send_with_retries(self, job: DeliveryJob, limit: asyncio.Semaphore,
                                 batch: _Batch) -> DeliveryResult:
        while True:
            rendered = self._render(job, batch)
            if rendered is None:
                return DeliveryResult.permanent("template_error", "the template failed to render")
            channel = self.channels[job.channel]
            message = self._message(job, rendered)
            async with limit:
                await self.limiter.acquire(channel.provider)
                started, began = time.monotonic(), self.clock()
                batch.touched.add(job.attempt_id)
                result = await channel.send(message)
                elapsed_ms = int((time.monotonic() - started) * 1000)
            if result.outcome is Outcome.TRANSIENT and result.error_code in AMBIGUOUS_ERRORS:
                settled = await self._look_up(channel, job, message, began, result)
                if settled is None:  # cannot tell: leave it 'sending' for the reconciler, never resend blindly
                    return result
                result = settled
            if result.outcome is Outcome.TRANSIENT and result.retry_after:
                await self.limiter.pause(channel.provider, result.retry_after)
            final = result.outcome is not Outcome.TRANSIENT or job.try_no >= self.policy.tries_for(job.channel)
            batch.outcomes.append(_outcome(job, result, rendered, channel.provider, elapsed_ms))
            self._count(batch.counts, result, final)
            if result.effect is not Effect.NONE:
                self._suppress(job, result)
            if final:
                return result
            if self.stopping.is_set():  # leave the next try to the next run
                self.ledger.insert_try(job, job.try_no + 1, job.channel, job.parent_id, self.clock(),
                                       status="planned")
                return result
            await asyncio.sleep(backoff_delay(job.try_no, result.retry_after, base=self.policy.backoff_base,
                                              cap=self.policy.backoff_cap))
            retry = self._next_try(job)
            if retry is None:
                return result
            job = retry

    async def _look_up(self, channel: Channel, job: DeliveryJob, message: Message, began: datetime,
                       result: DeliveryResult) -> DeliveryResult | None:
        """After a timeout the provider may have taken the message: ask it before any retry.

        Returns ``sent`` with the SID found, the original (retryable) result when the
        provider has no such message, or ``None`` when it cannot be asked.
        """
        if not isinstance(channel, SentLookup):
            return result
        try:
            sids = await channel.find_sent(message.to, began - LOOKUP_SLACK, message.body)
        except DeliveryError as exc:
            log.warning("attempt %s: timed out and the provider cannot be asked (%s); left for reconciliation",
                        job.attempt_id, exc)
            return None
        fresh = [sid for sid in sids if not self.ledger.has_provider_id(sid)]
        if fresh:
            log.info("attempt %s: timed out but the provider had taken it (%s); not resent", job.attempt_id,
                     fresh[0])
            return DeliveryResult.sent(fresh[0])
        return result

    def _render(self, job: DeliveryJob, batch: _Batch) -> Rendered | None:
        step = self.schedule.step_named(job.step)
        try:
            if step is None:
                raise TemplateError(f"step {job.step!r} is no longer in the ladder")
            unsubscribe_url = self.headers_for(job)[0] if self.headers_for else None
            deadline = job.account.deadline or job.local_today + timedelta(days=step.deadline_days)
            context = RenderContext(job.account, step, job.occurrence, job.days_overdue, deadline,
                                    job.local_today, unsubscribe_url)
            rendered = self.composer.render(context, job.channel)
        except TemplateError as exc:
            log.error("attempt %s (%s, %s): %s", job.attempt_id, job.account.account_id, job.channel.value, exc)
            batch.outcomes.append(AttemptOutcome(job.attempt_id, "failed", error_code="template_error",
                                                 error_class="permanent", error_message=str(exc)))
            batch.counts.failed += 1
            return None
        block = self.content_check.check(rendered, job.account) if self.content_check else None
        if block is not None:
            log.error("attempt %s (%s, %s) blocked: %s: %s", job.attempt_id, job.account.account_id,
                      job.channel.value, block.rule_id, block.detail)
            batch.outcomes.append(AttemptOutcome(job.attempt_id, "suppressed", rule_id=block.rule_id,
                                                 detail=block.detail, template=rendered.template,
                                                 template_version=rendered.template_version,
                                                 content_hash=rendered.content_hash))
            batch.counts.suppressed += 1
            return None
        return rendered

    def _message(self, job: DeliveryJob, rendered: Rendered) -> Message:
        headers = self.headers_for(job)[1] if self.headers_for and job.channel is ChannelKind.EMAIL else {}
        return Message(
            attempt_id=job.attempt_id, reminder_key=job.reminder_key, account_id=job.account.account_id,
            channel=job.channel, to=job.address, body=rendered.body, subject=rendered.subject,
            html=rendered.html, title=rendered.title, data=rendered.data, headers=headers,
            locale=rendered.locale,
        )

    def _next_try(self, job: DeliveryJob) -> DeliveryJob | None:
        attempt_id = self.ledger.insert_try(job, job.try_no + 1, job.channel, job.parent_id, self.clock())
        return None if attempt_id is None else replace(job, attempt_id=attempt_id, try_no=job.try_no + 1)

    def _fallback(self, job: DeliveryJob, result: DeliveryResult, facts: BatchFacts | None,
                  batch: _Batch) -> DeliveryJob | None:
        """The job for the step's next usable channel after a permanent failure, if the step has one.

        A fallback channel passes the same re-checks as any send (opt-out, window ...):
        a suppressed one is recorded and skipped, a deferred one is left to a later run.
        """
        if result.outcome is not Outcome.PERMANENT or self.stopping.is_set():
            return None
        for index, channel in enumerate(job.fallbacks):
            address = address_for(job.account, channel)
            if not address:
                continue
            attempt_id = self.ledger.insert_try(job, 1, channel, job.attempt_id, self.clock(), address=address)
            if attempt_id is None:
                return None
            candidate = replace(job, attempt_id=attempt_id, try_no=1, channel=channel, address=address,
                                fallbacks=job.fallbacks[index + 1 :], parent_id=job.attempt_id)
            block = self._blocked(candidate, channel, address, facts, batch, fallback=True)
            if block is not None:
                if block.defer:
                    return None
                continue
            log.info("attempt %s: %s failed permanently, falling back to %s as attempt %s",
                     job.attempt_id, job.channel.value, channel.value, attempt_id)
            return candidate
        return None

    def _suppress(self, job: DeliveryJob, result: DeliveryResult) -> None:
        """A provider said the address is opted out or dead: stop using it for every reminder."""
        source = _SUPPRESSION_SOURCE[result.effect]
        if suppress(self.ledger.engine, job.channel.value, job.address, source, self.clock(),
                    account_id=job.account.account_id, detail=f"{result.error_code}: {result.error_message}"):
            log.warning("%s to %s suppressed from now on (%s, attempt %s)", job.channel.value,
                        mask_address(job.channel.value, job.address), source, job.attempt_id)

    @staticmethod
    def _count(counts: RunCounts, result: DeliveryResult, final: bool) -> None:
        if result.outcome is Outcome.SENT:
            counts.sent += 1
        elif final:
            counts.failed += 1


def _as_reread(job: DeliveryJob, facts: BatchFacts | None) -> DeliveryJob:
    """``job`` with its account as re-read just now: a message states today's balance, not the planned one."""
    fresh = facts.accounts.get(job.account.account_id) if facts is not None and facts.rechecked else None
    if fresh is None or fresh is job.account or fresh == job.account:
        return job
    return replace(job, account=fresh)


def _deferral(job: DeliveryJob, channel: ChannelKind, block: Block, now: datetime) -> dict[str, Any]:
    """A try-0 ``deferred`` row: the reminder waits for a later run."""
    return {
        "reminder_key": job.reminder_key, "account_id": job.account.account_id, "step": job.step,
        "occurrence": job.occurrence, "channel": channel.value, "try_no": 0, "status": "deferred",
        "address": mask_address(channel.value, job.address), "address_hash": address_hash(job.address),
        "borrower_hash": borrower_key(job.account),
        "rule_id": block.rule_id, "detail": block.detail, "not_before": block.not_before, "run_id": job.run_id,
        "created_at": now, "updated_at": now,
    }


def _outcome(job: DeliveryJob, result: DeliveryResult, rendered: Rendered, provider: str,
             duration_ms: int) -> AttemptOutcome:
    if result.outcome is Outcome.SENT:
        status, error_class = "sent", None
    else:
        status, error_class = "failed", result.outcome.value
    return AttemptOutcome(
        job.attempt_id, status, provider_message_id=result.provider_message_id, error_code=result.error_code,
        error_class=error_class, error_message=result.error_message, template=rendered.template,
        template_version=rendered.template_version, content_hash=rendered.content_hash, provider=provider,
        duration_ms=duration_ms,
    )
