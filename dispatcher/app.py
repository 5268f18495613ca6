"""The one place that builds the object graph: settings → schedule → ledger → source → pipeline."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Channel
from dispatcher.channels.registry import Providers
from dispatcher.compose.handoff import HandoffComposer
from dispatcher.compose.renderer import Composer
from dispatcher.errors import ConfigError, LedgerError
from dispatcher.ledger.config_versions import ensure_recorded, fetch, load_stored
from dispatcher.ledger.database import create_ledger_engine, upgrade
from dispatcher.ledger.runs import RunLedger
from dispatcher.ledger.store import Ledger
from dispatcher.pay_links import PayLinks
from dispatcher.pipeline.book import Booker
from dispatcher.pipeline.deliver import DEFAULT_BACKOFF_CAP, Deliverer, DeliveryPolicy
from dispatcher.pipeline.executors import CeleryExecutor, Executor, InProcessExecutor
from dispatcher.pipeline.job_loader import JobLoader
from dispatcher.pipeline.plan import Planner
from dispatcher.pipeline.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from dispatcher.pipeline.reconcile import Reconciler
from dispatcher.pipeline.source import AccountSource
from dispatcher.rules.content import ContentCheck, template_checks
from dispatcher.rules.engine import RuleEngine, build_engine
from dispatcher.rules.policy import Policy, resolve_policy
from dispatcher.schedule.loader import LoadedSchedule, load_schedule
from dispatcher.send_check import SendCheck
from dispatcher.settings import Settings
from dispatcher.unsubscribe import UnsubscribeLinks

if TYPE_CHECKING:  # the module imports this one; a daemon without a broker imports it when it starts
    from dispatcher.pipeline.parallel import Planners

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock; business code receives time as an argument instead of calling this."""
    return datetime.now(UTC)


def load(settings: Settings) -> LoadedSchedule:
    """schedules.yaml with every check, templates and their content included; raises ConfigError."""
    return load_schedule(settings.schedules_path, settings.env, check_templates=template_checks)


def load_version(settings: Settings, version: str, engine: Engine | None = None) -> LoadedSchedule:
    """Configuration ``version``: this machine's schedules.yaml when it is that version, else the ledger's copy.

    Raises :class:`ConfigError` when neither is that version (the copy is stored by :meth:`App.share_version`).
    """
    try:
        loaded: LoadedSchedule | None = load(settings)
    except ConfigError:
        loaded = None  # the file is broken or mid-edit here; the ledger's copy may still serve
    if loaded is not None and loaded.version == version:
        return loaded
    mine = loaded.version if loaded is not None else "unreadable"
    ledger = engine or create_ledger_engine(settings.database_url)
    try:
        stored = fetch(ledger, version)
    finally:
        if engine is None:
            ledger.dispose()
    if stored is None:
        raise ConfigError(f"configuration version {version} is neither this machine's schedules.yaml "
                          f"(version {mine}) nor stored in the ledger; its attempts stay planned")
    log.info("running configuration version %s from the ledger's copy (this machine's schedules.yaml is %s)",
             version, mine)
    return load_stored(stored, settings.env)


@dataclass(frozen=True)
class Pipeline:
    """Everything one version of schedules.yaml needs to plan and deliver."""

    loaded: LoadedSchedule
    policy: Policy
    rules: RuleEngine
    composer: Composer
    planner: Planner
    source: AccountSource


@dataclass
class App:
    """The wired dispatcher: settings, the ledger, the current pipeline, the clock."""

    settings: Settings
    engine: Engine
    ledger: Ledger
    runs: RunLedger
    pipeline: Pipeline
    providers: Providers
    clock: Clock = utc_now
    rate_share: int = 1
    """Processes of one run sharing the provider rate limits without Redis: each takes this share of them."""
    planners: Planners | None = None
    """The daemon's helper processes kept between runs (None: a run without a broker starts its own)."""

    def build_pipeline(self, loaded: LoadedSchedule) -> Pipeline:
        """A pipeline for a (new) version of schedules.yaml, sharing this app's ledger."""
        return build_pipeline(self.settings, loaded, self.engine)

    def channels(self) -> dict[ChannelKind, Channel]:
        """Fresh channel objects (one set per run or worker batch: they hold connections); hand-offs included."""
        return self.providers.build(self.settings.outbox_dir, self.engine, self.clock)

    def unsubscribe_links(self) -> UnsubscribeLinks:
        settings = self.settings
        return UnsubscribeLinks(settings.public_url, settings.secret_key)

    def booker(self) -> Booker:
        return Booker(self.ledger)

    def limiter(self, pipeline: Pipeline) -> RateLimiter:
        """Provider rate limits: shared through Redis when there is a Redis broker, else per process."""
        limits = {str(name): rate for name, rate in pipeline.loaded.schedule.delivery.rate_limits.items()}
        broker = self.settings.broker_url
        if broker and broker.startswith(("redis://", "rediss://", "unix://")):
            return RedisRateLimiter(broker, limits)
        return LocalRateLimiter({name: rate / self.rate_share for name, rate in limits.items()})

    def delivery_policy(self, pipeline: Pipeline) -> DeliveryPolicy:
        settings = self.settings
        return DeliveryPolicy(
            concurrency=settings.concurrency, max_tries=settings.max_tries,
            tries=pipeline.loaded.schedule.delivery.max_tries,
            backoff_cap=min(DEFAULT_BACKOFF_CAP, settings.visibility_timeout / 2),
        )

    def executor(self, pipeline: Pipeline, stopping: threading.Event | None = None,
                 run_id: int | None = None) -> Executor:
        """Celery workers when a broker is configured, else this process.

        With a broker the ledger keeps a copy of ``pipeline``'s configuration version, so every worker runs the
        version a task names even when its own schedules.yaml differs (:mod:`dispatcher.worker`).
        """
        if self.settings.broker_url:
            from dispatcher.celery_app import delivery_task  # imports Celery only when a broker is set

            self.share_version(pipeline.loaded)
            return CeleryExecutor(delivery_task(), pipeline.loaded.schedule.delivery.task_batch,
                                  pipeline.loaded.version, run_id, float(self.settings.run_timeout))
        return InProcessExecutor(self.deliverer(pipeline, stopping), self.job_loader(pipeline), self.clock)

    def share_version(self, loaded: LoadedSchedule) -> None:
        """Store ``loaded`` for other processes (Celery workers, a run's planning processes); when it cannot be,
        those whose schedules.yaml differs refuse its work (:func:`load_version`)."""
        try:
            ensure_recorded(self.engine, loaded, self.clock())  # logs a file that is not UTF-8 text
        except LedgerError as exc:
            log.error("configuration version %s is not stored for the workers: %s", loaded.version, exc)

    def job_loader(self, pipeline: Pipeline) -> JobLoader:
        """Rebuilds jobs from attempt ids (workers, ``retry``, lost tasks)."""
        return JobLoader(self.engine, pipeline.source, pipeline.loaded.schedule)

    def reconciler(self, pipeline: Pipeline) -> Reconciler:
        """Settles crashed sends, asking each channel that can tell (close it with ``aclose()``)."""
        return Reconciler(self.engine, pipeline.source, self.channels(), self.settings.unknown_outcome)

    def send_check(self, pipeline: Pipeline) -> SendCheck:
        """The rules re-checked just before sending, on a fresh read of the accounts."""
        return SendCheck(pipeline.source, self.ledger, pipeline.rules, pipeline.loaded.schedule.timezone,
                         pipeline.policy.contacts_since)

    def deliverer(self, pipeline: Pipeline, stopping: threading.Event | None = None) -> Deliverer:
        """A deliverer with fresh channels; close it with ``aclose()`` when the run ends."""
        return Deliverer(
            self.ledger, pipeline.composer, pipeline.loaded.schedule, self.channels(),
            policy=self.delivery_policy(pipeline), limiter=self.limiter(pipeline),
            clock=self.clock, headers_for=self.unsubscribe_links(), stopping=stopping,
            send_check=self.send_check(pipeline),
            content_check=ContentCheck(pipeline.policy, pipeline.composer),
        )


def build_pipeline(settings: Settings, loaded: LoadedSchedule, ledger_engine: Engine) -> Pipeline:
    schedule = loaded.schedule
    source_url = schedule.source.url
    given = schedule.source
    source = (
        AccountSource.from_url(source_url, given.query, given.batch_size, given.recheck_query)
        if source_url
        else AccountSource(ledger_engine, given.query, given.batch_size, given.recheck_query)
    )
    policy = resolve_policy(schedule)
    rules = build_engine(schedule, policy)
    return Pipeline(
        loaded=loaded,
        policy=policy,
        rules=rules,
        composer=HandoffComposer(loaded.templates, schedule, PayLinks(schedule.payments.link, settings.secret_key)),
        planner=Planner(schedule, rules),
        source=source,
    )


def build_app(settings: Settings, loaded: LoadedSchedule | None = None, *, migrate: bool = True,
              clock: Clock = utc_now) -> App:
    """Wire the dispatcher from settings; applies ledger migrations unless ``migrate`` is False."""
    loaded = loaded or load(settings)
    engine = create_ledger_engine(settings.database_url)
    if migrate:
        upgrade(engine)
    providers = Providers.from_env(settings.env)
    runs = RunLedger(engine, timedelta(seconds=settings.run_lease))
    return App(settings, engine, Ledger(engine), runs, build_pipeline(settings, loaded, engine), providers, clock)
