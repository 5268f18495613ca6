"""Delivery: claim → re-check → render → hand over → send → record, with retries and fallback.

The same code runs in the daemon's process and inside Celery workers. A job's
attempt is claimed by a conditional update (``planned → claimed``) only just
before it is sent, so a job handed out twice is sent once and a crash or a stop
leaves the rest of a batch ``planned``; on SMTP and FCM it is marked ``sending``
just before the provider call, so after a crash only those can end unknown.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from dispatcher.accounts import Account, RejectedRow
from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import (
    AMBIGUOUS_ERRORS,
    AttemptLookup,
    Channel,
    DeliveryResult,
    Effect,
    Message,
    Outcome,
    SentLookup,
)
from dispatcher.compose.renderer import Composer, RenderContext, Rendered
from dispatcher.errors import DeliveryError, LedgerError, TemplateError
from dispatcher.ladder import pay_by
from dispatcher.ledger.claims import AttemptOutcome, GiveBack
from dispatcher.ledger.group_commit import GroupCommitter
from dispatcher.ledger.store import Ledger
from dispatcher.ledger.suppressions import suppress
from dispatcher.ledger.tally import HELD_CLASS
from dispatcher.logs import job_fields
from dispatcher.masking import address_hash, mask_address
from dispatcher.pipeline.claim_ahead import ClaimAhead
from dispatcher.pipeline.history import borrower_key
from dispatcher.pipeline.jobs import DeliveryJob, RunCounts
from dispatcher.pipeline.plan import address_for
from dispatcher.pipeline.ratelimit import LocalRateLimiter, RateLimiter
from dispatcher.records import record
from dispatcher.rules.base import Block
from dispatcher.rules.content import ContentCheck
from dispatcher.schedule.models import Schedule
from dispatcher.send_check import BatchFacts, SendCheck

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


@record
class _Start:
    """Where delivering a job begins: its first try (claimed by ``ahead``), or a further try after ``delay``
    seconds (``origin``: the try whose channel failed over, if the job falls back)."""

    job: DeliveryJob
    ahead: ClaimAhead | None
    fallback: bool = False
    first: bool = True
    delay: float = 0.0
    origin: DeliveryJob | None = None


class Deliverer:
    """Delivers batches of jobs through the configured channels and records every try as it happens.

    Messages are claimed just ahead of the places in flight (at most
    :data:`~dispatcher.pipeline.claim_ahead.AHEAD_PER_PLACE` times ``policy.concurrency``
    claimed and waiting, ``policy.concurrency`` in flight), handed over just
    before their provider call where the provider cannot be asked afterwards, and
    recorded when the provider answers; the writes of the messages in flight are
    committed together
    (:class:`~dispatcher.ledger.group_commit.GroupCommitter`). A crash therefore
    leaves claimed only the messages in flight, those claimed just ahead of them
    (:class:`~dispatcher.pipeline.claim_ahead.ClaimAhead`) and, for providers that can be
    asked, outcomes not yet committed; only SMTP and FCM messages in flight can end
    ``unknown``. A stop leaves everything not yet in flight ``planned`` for the next run.
    """

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
        self.commit = GroupCommitter(ledger.engine, clock)
        self._answers = {kind: isinstance(channel, AttemptLookup | SentLookup) for kind, channel in channels.items()}
        self._steps = {step.step: step for step in schedule.ladder}

    async def deliver(self, jobs: Sequence[DeliveryJob],
                      accounts: Mapping[str, Account | RejectedRow] | None = None) -> RunCounts:
        """Re-check, claim, send and record each job, up to ``policy.concurrency`` at a time.

        ``accounts`` are the jobs' accounts just re-read from the source, when the caller has them.
        The jobs are taken in order by ``policy.concurrency`` lanes, not a task each (a task per job cost 13-15 µs
        more CPU a message, measured apart on the same claim-ahead pattern); a try that waits for its next (a
        transient failure's backoff) waits in a task of its own, so its lane goes on.
        """
        counts = RunCounts()
        if not jobs:
            return counts
        facts = self.send_check.facts(jobs, self.clock(), accounts) if self.send_check else None
        places = asyncio.Semaphore(self.policy.concurrency)
        ahead = ClaimAhead(self.commit, [job.attempt_id for job in jobs], self.policy.concurrency, self.stopping)
        waiting = deque(jobs)
        retries: set[asyncio.Task[None]] = set()

        async def lane() -> None:
            while waiting:
                await self._guarded(_Start(_as_reread(waiting.popleft(), facts), ahead), places, facts, counts,
                                    retries)

        try:
            await asyncio.gather(*(lane() for _ in range(min(self.policy.concurrency, len(jobs)))))
            while retries:
                await asyncio.gather(*retries)
        except BaseException:
            for task in retries:
                task.cancel()
            raise
        finally:
            self.commit.flush()  # the outcomes still lagging: a batch ends with its ledger up to date
        return counts

    async def _guarded(self, start: _Start, places: asyncio.Semaphore, facts: BatchFacts | None,
                       counts: RunCounts, retries: set[asyncio.Task[None]]) -> None:
        """One job and its fallbacks, from ``start``; an unexpected error is logged (what was claimed stays for
        the reconciler). A try to be made again after a pause goes on in a task of its own, added to
        ``retries``."""
        job = current = start.job
        try:
            claimed, fallback, first, origin = start.ahead, start.fallback, start.first, start.origin or current
            while True:
                result = await self._attempt(current, places, facts, counts, claimed, fallback=fallback, first=first)
                if isinstance(result, _Start):  # its next try waits out a backoff
                    task = asyncio.create_task(self._after(replace(result, origin=origin), places, facts, counts,
                                                           retries))
                    retries.add(task)
                    task.add_done_callback(retries.discard)
                    return
                following = await self._fallback(origin, result)
                if following is None:
                    return
                current = origin = following
                claimed, fallback, first = None, True, True
        except LedgerError as exc:
            log.error("attempt %s (%s, %s): %s; left for the reconciler", job.attempt_id, job.account.account_id,
                      job.channel.value, exc, extra=job_fields(job))
        except Exception:
            log.exception("attempt %s (%s, %s) failed unexpectedly", job.attempt_id, job.account.account_id,
                          job.channel.value, extra=job_fields(job))

    async def _after(self, start: _Start, places: asyncio.Semaphore, facts: BatchFacts | None, counts: RunCounts,
                     retries: set[asyncio.Task[None]]) -> None:
        """The next try of a job after its backoff (its own task: the lane that ran the try before went on)."""
        await asyncio.sleep(start.delay)
        await self._guarded(start, places, facts, counts, retries)

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()
        await self.limiter.aclose()
        self.commit.close()

    async def _attempt(self, job: DeliveryJob, places: asyncio.Semaphore, facts: BatchFacts | None,
                       counts: RunCounts, ahead: ClaimAhead | None, *,
                       fallback: bool, first: bool = True) -> DeliveryResult | Block | _Start | None:
        """Claim and send ``job``; ``None`` when it did not go out or is in doubt.

        The first try is claimed by ``ahead`` (a group at a time), further tries and
        fallback channels one by one. A :class:`Block` is returned for a re-check that
        refused the channel (recorded); a :class:`_Start` for the next try of a transient
        failure, to be made after its backoff.
        """
        if ahead is not None and not await ahead.claim(job.attempt_id):
            counts.skipped += not self.stopping.is_set()
            return None
        async with places:
            if ahead is not None:
                ahead.started()
            elif not await self._claim_one(job, counts, first):
                return None
            if self.stopping.is_set():  # claimed, nothing handed over: it stays planned for the next run
                await self.commit.give_back(GiveBack(job.attempt_id))
                return None
            if first:
                block = await self._blocked(job, facts, counts, fallback=fallback)
                if block is not None:
                    return block
            outcome = await self._send_once(job, counts)
            if outcome is None:
                return None
            result, next_id = outcome
            if next_id is None:  # final, or the next try belongs to someone else
                return result
        if self.stopping.is_set():  # the next try stays planned for the next run
            return None
        delay = backoff_delay(job.try_no, result.retry_after, base=self.policy.backoff_base,
                              cap=self.policy.backoff_cap)
        return _Start(replace(job, attempt_id=next_id, try_no=job.try_no + 1), None, fallback=fallback, first=False,
                      delay=delay)

    async def _claim_one(self, job: DeliveryJob, counts: RunCounts, first: bool) -> bool:
        if self.stopping.is_set():  # not claimed: it stays planned for the next run
            return False
        if job.attempt_id in await self.commit.claim([job.attempt_id]):
            return True
        counts.skipped += first
        return False

    async def _send_once(self, job: DeliveryJob, counts: RunCounts) -> tuple[DeliveryResult, int | None] | None:
        """Render, hand over, send and record one claimed try.

        Returns the result and the id of the next try booked for a transient failure, or
        ``None`` when nothing can be said yet (held back, given back, or left in doubt).
        """
        rendered = await self._render(job, counts)
        if rendered is None:
            return None
        channel = self.channels[job.channel]
        message = self._message(job, rendered)
        await self.limiter.acquire(channel.provider)
        if self.stopping.is_set() or not await self._hand_over(job, channel):
            await self.commit.give_back(GiveBack(job.attempt_id))
            return None
        started, began = time.monotonic(), self.clock()
        result = await channel.send(message)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        if result.outcome is Outcome.TRANSIENT and result.error_code in AMBIGUOUS_ERRORS:
            settled = await self._look_up(channel, job, message, began, result)
            if settled is None:  # cannot tell: it stays claimed for the reconciler, never resent blindly
                return None
            result = settled
        if result.outcome is Outcome.TRANSIENT and result.retry_after:
            await self.limiter.pause(channel.provider, result.retry_after)
        final = result.outcome is not Outcome.TRANSIENT or job.try_no >= self.policy.tries_for(job.channel)
        outcome = _outcome(job, result, rendered, channel.provider, elapsed_ms, began)
        if final and self._answers[job.channel] and result.effect is Effect.NONE:
            self.commit.record_soon(outcome)  # the provider can be asked after a crash: no need to wait
            next_id = None
        else:
            following = None if final else _try_row(job, job.try_no + 1, job.channel, job.parent_id, None,
                                                    self.clock())
            next_id = await self.commit.record(outcome, following)
        self._count(counts, result, final)
        if result.effect is not Effect.NONE:
            self._suppress(job, result)
        return result, next_id

    async def _hand_over(self, job: DeliveryJob, channel: Channel) -> bool:
        """Mark ``job`` handed over (``claimed → sending``) before its provider call.

        A channel whose provider can be asked whether it took a message (the outbox,
        Twilio) needs no such marker: a crash leaves the attempt ``claimed`` and the
        reconciler asks the provider. SMTP relays and FCM cannot be asked: for them the
        marker is committed before the call, so that a claim never handed over is sent
        again and only a handed-over one can end ``unknown``.
        """
        if self._answers[job.channel]:
            return True
        return await self.commit.hand_over(job.attempt_id)

    async def _blocked(self, job: DeliveryJob, facts: BatchFacts | None, counts: RunCounts, *,
                       fallback: bool) -> Block | None:
        """Re-check a claimed ``job``; a refusal is recorded (suppressed, or deferred and given back)."""
        if self.send_check is None or facts is None:
            return None
        block = self.send_check.check(job, job.channel, job.address, facts, self.clock(), fallback=fallback)
        if block is None:
            return None
        log.info("attempt %s (%s, %s) held back before sending: %s: %s", job.attempt_id,
                 job.account.account_id, job.channel.value, block.rule_id, block.detail, extra=job_fields(job))
        if block.defer:
            await self.commit.give_back(GiveBack(job.attempt_id, rule_id=block.rule_id))
            await self.commit.decide(_deferral(job, job.channel, block, self.clock()))
            counts.deferred += 1
        else:
            await self.commit.record(AttemptOutcome(job.attempt_id, "suppressed", rule_id=block.rule_id,
                                                    detail=block.detail))
            counts.suppressed += 1
        return block

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
            log.warning("attempt %s: timed out and the provider cannot be asked (%s); its outcome is asked "
                        "again at reconciliation", job.attempt_id, exc, extra=job_fields(job))
            return None
        self.commit.flush()  # outcomes still lagging hold the ids of this number's other messages
        fresh = [sid for sid in sids if not self.ledger.has_provider_id(sid)]
        if fresh:
            log.info("attempt %s: timed out but the provider had taken it (%s); not resent", job.attempt_id,
                     fresh[0], extra=job_fields(job))
            return DeliveryResult.sent(fresh[0])
        return result

    async def _render(self, job: DeliveryJob, counts: RunCounts) -> Rendered | None:
        """The rendered message, or ``None``: a template that fails holds the claim back; a message the
        content rules refuse is suppressed.

        A held attempt is given back (``planned``) with error class ``template``: it is
        not burned, and goes out in a run after a valid edit of the templates.
        """
        step = self._steps.get(job.step)
        try:
            if step is None:
                raise TemplateError(f"step {job.step!r} is no longer in the ladder")
            unsubscribe_url = self.headers_for(job)[0] if self.headers_for else None
            deadline = pay_by(job.account, step, job.local_today, job.days_overdue)
            context = RenderContext(job.account, step, job.occurrence, job.days_overdue, deadline,
                                    job.local_today, unsubscribe_url)
            rendered = self.composer.render(context, job.channel)
        except TemplateError as exc:
            log.error("attempt %s (%s, %s) held until the templates are fixed: %s", job.attempt_id,
                      job.account.account_id, job.channel.value, exc, extra=job_fields(job))
            await self.commit.give_back(GiveBack(job.attempt_id, "template_error", HELD_CLASS, str(exc)))
            counts.held += 1
            return None
        block = self.content_check.check(rendered, job.account) if self.content_check else None
        if block is not None:  # the templates passed these rules when loaded: the account's data breaks them
            log.error("attempt %s (%s, %s) blocked: %s: %s", job.attempt_id, job.account.account_id,
                      job.channel.value, block.rule_id, block.detail, extra=job_fields(job))
            await self.commit.record(AttemptOutcome(job.attempt_id, "suppressed", rule_id=block.rule_id,
                                                    detail=block.detail, template=rendered.template,
                                                    template_version=rendered.template_version,
                                                    content_hash=rendered.content_hash))
            counts.suppressed += 1
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

    async def _fallback(self, job: DeliveryJob, result: DeliveryResult | Block | None) -> DeliveryJob | None:
        """The job for the step's next channel after a permanent failure, if the step has one.

        A fallback channel is claimed and re-checked like any send (opt-out, window,
        caps ...): a suppressed one is recorded and the next is tried, a deferred one
        is left to a later run.
        """
        if isinstance(result, Block):
            if result.defer or job.parent_id is None:
                return None
            return await self._next_fallback(job, job.parent_id)
        if result is None or result.outcome is not Outcome.PERMANENT or self.stopping.is_set():
            return None
        return await self._next_fallback(job, job.attempt_id)

    async def _next_fallback(self, job: DeliveryJob, parent_id: int) -> DeliveryJob | None:
        for index, channel in enumerate(job.fallbacks):
            address = address_for(job.account, channel)
            if not address:
                continue
            attempt_id = await self.commit.insert_try(_try_row(job, 1, channel, parent_id, address, self.clock()))
            if attempt_id is None:
                return None
            log.info("attempt %s: %s failed permanently, falling back to %s as attempt %s",
                     parent_id, job.channel.value, channel.value, attempt_id)
            return replace(job, attempt_id=attempt_id, try_no=1, channel=channel, address=address,
                           fallbacks=job.fallbacks[index + 1 :], parent_id=parent_id, planned_address_hash=None)
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


def _try_row(job: DeliveryJob, try_no: int, channel: ChannelKind, parent_id: int | None, address: str | None,
             now: datetime) -> dict[str, Any]:
    """A further try of ``job`` (a retry, or a fallback channel's first try at ``address``), ``planned``."""
    to = address or job.address
    return {
        "reminder_key": job.reminder_key, "account_id": job.account.account_id, "step": job.step,
        "occurrence": job.occurrence, "channel": channel.value, "try_no": try_no, "status": "planned",
        "address": mask_address(channel.value, to), "address_hash": address_hash(to),
        "borrower_hash": borrower_key(job.account), "parent_id": parent_id, "run_id": job.run_id,
        "created_at": now, "attempted_at": None, "updated_at": now,
    }


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
             duration_ms: int, began: datetime) -> AttemptOutcome:
    if result.outcome is Outcome.SENT:
        status, error_class = "sent", None
    else:
        status, error_class = "failed", result.outcome.value
    return AttemptOutcome(
        job.attempt_id, status, provider_message_id=result.provider_message_id, error_code=result.error_code,
        error_class=error_class, error_message=result.error_message, template=rendered.template,
        template_version=rendered.template_version, content_hash=rendered.content_hash, provider=provider,
        duration_ms=duration_ms, attempted_at=began,
    )
