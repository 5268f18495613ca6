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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from dispatcher.channels.base import Channel, ChannelKind, DeliveryResult, Effect, Message, Outcome
from dispatcher.compose.renderer import Composer, RenderContext, Rendered
from dispatcher.errors import TemplateError
from dispatcher.jobs import DeliveryJob, RunCounts
from dispatcher.ledger.store import AttemptOutcome, Ledger
from dispatcher.ledger.suppressions import suppress
from dispatcher.planner import address_for
from dispatcher.schedule.models import Schedule

log = logging.getLogger(__name__)

DEFAULT_BACKOFF_BASE = 1.0
"""Seconds before the second try; doubled for each further try, with jitter."""

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
    """Bounds of delivery: messages in flight, tries per message, waits between tries."""

    concurrency: int = 32
    max_tries: int = 3
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP


@dataclass
class _Batch:
    outcomes: list[AttemptOutcome] = field(default_factory=list)
    counts: RunCounts = field(default_factory=RunCounts)


class Deliverer:
    """Delivers batches of jobs through the configured channels and records every try."""

    def __init__(self, ledger: Ledger, composer: Composer, schedule: Schedule,
                 channels: Mapping[ChannelKind, Channel], *, policy: DeliveryPolicy, clock: Clock,
                 headers_for: HeadersFor | None = None, stopping: threading.Event | None = None) -> None:
        self.ledger = ledger
        self.composer = composer
        self.schedule = schedule
        self.channels = channels
        self.policy = policy
        self.clock = clock
        self.headers_for = headers_for
        self.stopping = stopping or threading.Event()

    async def deliver(self, jobs: Sequence[DeliveryJob]) -> RunCounts:
        """Claim the batch's attempts, send the claimed ones concurrently, record the outcomes."""
        batch = _Batch()
        claimed = self.ledger.start_sending([job.attempt_id for job in jobs], self.clock())
        mine = [job for job in jobs if job.attempt_id in claimed]
        batch.counts.skipped = len(jobs) - len(mine)
        limit = asyncio.Semaphore(self.policy.concurrency)
        unsent = await asyncio.gather(*(self._deliver_job(job, limit, batch) for job in mine))
        self.ledger.finish_attempts(batch.outcomes, self.clock())
        released = [job.attempt_id for job, was_unsent in zip(mine, unsent, strict=True) if was_unsent]
        if released:
            self.ledger.release(released, self.clock())
        return batch.counts

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()

    async def _deliver_job(self, job: DeliveryJob, limit: asyncio.Semaphore, batch: _Batch) -> bool:
        """Sends one job (retries, then fallback). Returns True when stopped before sending anything."""
        current: DeliveryJob | None = job
        first = True
        while current is not None:
            if self.stopping.is_set() and first:
                return True
            first = False
            result = await self._send_with_retries(current, limit, batch)
            current = self._fallback(current, result)
        return False

    async def _send_with_retries(self, job: DeliveryJob, limit: asyncio.Semaphore,
                                 batch: _Batch) -> DeliveryResult:
        while True:
            rendered = self._render(job, batch)
            if rendered is None:
                return DeliveryResult.permanent("template_error", "the template failed to render")
            async with limit:
                result = await self.channels[job.channel].send(self._message(job, rendered))
            final = result.outcome is not Outcome.TRANSIENT or job.try_no >= self.policy.max_tries
            batch.outcomes.append(_outcome(job, result, rendered, self.channels[job.channel].provider))
            self._count(batch.counts, result, final)
            if result.effect is not Effect.NONE:
                self._suppress(job, result)
            if final or self.stopping.is_set():
                return result
            await asyncio.sleep(backoff_delay(job.try_no, result.retry_after, base=self.policy.backoff_base,
                                              cap=self.policy.backoff_cap))
            retry = self._next_try(job)
            if retry is None:
                return result
            job = retry

    def _render(self, job: DeliveryJob, batch: _Batch) -> Rendered | None:
        step = self.schedule.step_named(job.step)
        try:
            if step is None:
                raise TemplateError(f"step {job.step!r} is no longer in the ladder")
            unsubscribe_url = self.headers_for(job)[0] if self.headers_for else None
            deadline = job.account.deadline or job.local_today + timedelta(days=step.deadline_days)
            context = RenderContext(job.account, step, job.occurrence, job.days_overdue, deadline,
                                    job.local_today, unsubscribe_url)
            return self.composer.render(context, job.channel)
        except TemplateError as exc:
            log.error("attempt %s (%s, %s): %s", job.attempt_id, job.account.account_id, job.channel.value, exc)
            batch.outcomes.append(AttemptOutcome(job.attempt_id, "failed", error_code="template_error",
                                                 error_class="permanent", error_message=str(exc)))
            batch.counts.failed += 1
            return None

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

    def _fallback(self, job: DeliveryJob, result: DeliveryResult) -> DeliveryJob | None:
        """The job for the step's next channel after a permanent failure, if the step has one."""
        if result.outcome is not Outcome.PERMANENT or self.stopping.is_set():
            return None
        for channel in job.fallbacks:
            address = address_for(job.account, channel)
            if not address:
                continue
            attempt_id = self.ledger.insert_try(job, 1, channel, job.attempt_id, self.clock(), address=address)
            if attempt_id is None:
                return None
            rest = job.fallbacks[job.fallbacks.index(channel) + 1 :]
            log.info("attempt %s: %s failed permanently, falling back to %s as attempt %s",
                     job.attempt_id, job.channel.value, channel.value, attempt_id)
            return replace(job, attempt_id=attempt_id, try_no=1, channel=channel, address=address,
                           fallbacks=rest, parent_id=job.attempt_id)
        return None

    def _suppress(self, job: DeliveryJob, result: DeliveryResult) -> None:
        """A provider said the address is opted out or dead: stop using it for every reminder."""
        source = _SUPPRESSION_SOURCE[result.effect]
        if suppress(self.ledger.engine, job.channel.value, job.address, source, self.clock(),
                    account_id=job.account.account_id, detail=f"{result.error_code}: {result.error_message}"):
            log.warning("%s to %s suppressed from now on (%s, attempt %s)", job.channel.value, job.address,
                        source, job.attempt_id)

    @staticmethod
    def _count(counts: RunCounts, result: DeliveryResult, final: bool) -> None:
        if result.outcome is Outcome.SENT:
            counts.sent += 1
        elif final:
            counts.failed += 1


def _outcome(job: DeliveryJob, result: DeliveryResult, rendered: Rendered, provider: str) -> AttemptOutcome:
    if result.outcome is Outcome.SENT:
        status, error_class = "sent", None
    else:
        status, error_class = "failed", result.outcome.value
    return AttemptOutcome(
        job.attempt_id, status, provider_message_id=result.provider_message_id, error_code=result.error_code,
        error_class=error_class, error_message=result.error_message, template=rendered.template,
        template_version=rendered.template_version, content_hash=rendered.content_hash, provider=provider,
    )
