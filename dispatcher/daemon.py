"""The daemon: APScheduler cron jobs per run, schedules.yaml hot reload, clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime, timedelta
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from dispatcher.app import App, Pipeline, load
from dispatcher.errors import ConfigError, DispatcherError
from dispatcher.ledger.config_versions import record_loaded
from dispatcher.pipeline.dry_run import changes_between
from dispatcher.pipeline.run import Runner
from dispatcher.schedule.diff import Totals
from dispatcher.schedule.loader import LoadedSchedule
from dispatcher.schedule.models import Run
from dispatcher.schedule.watch import ScheduleWatcher

log = logging.getLogger(__name__)

MISFIRE_GRACE_SECONDS = 3600
"""A run whose time passed while the daemon was busy or down still fires within this many seconds."""

_JOB_PREFIX = "run:"
_FOLLOW_UP = "follow-up"

FOLLOW_UP_HORIZON = timedelta(days=14)
"""Deferrals older than this no longer schedule follow-up runs (scheduled runs still pick them up)."""


def trigger_for(run: Run, default_zone: str) -> CronTrigger:
    """The cron trigger of ``run`` in its zone (else the schedule's)."""
    return CronTrigger.from_crontab(run.cron, timezone=run.timezone or default_zone)


CATCH_UP_HORIZON = timedelta(days=1)
"""A daemon that starts catches up on the latest run it missed within this horizon, once."""

HOUSEKEEPING_SECONDS = 30
"""How often a daemon looks for runs whose daemon died (to take them over)."""


def latest_fire_time(trigger: CronTrigger, now: datetime, lookback: timedelta) -> datetime | None:
    """The latest time in (now - lookback, now] at which ``trigger`` fires."""
    previous: datetime | None = None
    probe = trigger.get_next_fire_time(None, now - lookback)
    while probe is not None and probe <= now:
        previous = probe
        probe = trigger.get_next_fire_time(probe, probe + timedelta(seconds=1))
    return previous


def last_fire_time(trigger: CronTrigger, now: datetime) -> datetime:
    """The fire time a job running now belongs to: the identity of a run."""
    found = latest_fire_time(trigger, now, timedelta(seconds=2 * MISFIRE_GRACE_SECONDS))
    return found or now.replace(second=0, microsecond=0)


class Daemon:
    """Fires the runs of schedules.yaml on time, one at a time, and follows edits of the file."""

    def __init__(self, app: App, *, watch_interval: float = 1.0) -> None:
        self.app = app
        self.stopping = threading.Event()
        self.runner = Runner(app, self.stopping)
        self._lock = threading.Lock()
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_SECONDS},
        )
        self._watcher = ScheduleWatcher(
            app.settings.schedules_path, lambda _path: load(app.settings),
            self._changed, self._refused, interval=watch_interval,
        )

    @property
    def pipeline(self) -> Pipeline:
        with self._lock:
            return self.app.pipeline

    def run_now(self, name: str = "startup") -> None:
        """Queue one run right away (used at start with ``--run-now``)."""
        self._scheduler.add_job(self._fire_now, args=[name], id=f"now:{name}", replace_existing=True)

    def serve(self) -> None:
        """Start everything and block until SIGTERM or SIGINT; the run in progress ends cleanly."""
        self._install_signals()
        self._schedule(self.pipeline.loaded)
        self._remember(self.pipeline.loaded)
        self._keep_planners()
        self._scheduler.add_job(self._catch_up, id="catch-up")
        self._scheduler.add_job(self._take_over, "interval", seconds=HOUSEKEEPING_SECONDS, id="take-over")
        self._scheduler.start()
        self._watcher.start()
        log.info("daemon started (schedules.yaml version %s); waiting for runs", self.pipeline.loaded.version)
        try:
            while not self.stopping.wait(1.0):
                pass
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.stopping.set()
        self._watcher.stop()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self.app.planners is not None:
            self.app.planners.close()
        log.info("daemon stopped")

    def _keep_planners(self) -> None:
        """Without a broker, keep the processes that plan a run's key ranges with this one between runs (the first
        split run starts them): each later run plans in all of them at once
        (:class:`~dispatcher.pipeline.parallel.Planners`)."""
        settings = self.app.settings
        if settings.broker_url or settings.plan_processes < 2 or self.app.planners is not None:
            return
        from dispatcher.pipeline.parallel import Planners  # imports multiprocessing only when used

        self.app.planners = Planners(settings.plan_processes - 1)

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            if not self.stopping.is_set():
                log.info("received %s: finishing the messages in flight, then stopping",
                         signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _schedule(self, loaded: LoadedSchedule) -> None:
        for job in self._scheduler.get_jobs():
            if job.id.startswith(_JOB_PREFIX):
                job.remove()
        schedule = loaded.schedule
        for run in schedule.runs:
            trigger = trigger_for(run, schedule.timezone)
            self._scheduler.add_job(self._fire, trigger, args=[run.name], id=_JOB_PREFIX + run.name,
                                    replace_existing=True)
            log.info("run %s scheduled: %r in %s", run.name, run.cron, run.timezone or schedule.timezone)

    def _fire(self, name: str) -> None:
        pipeline = self.pipeline
        run = next((r for r in pipeline.loaded.schedule.runs if r.name == name), None)
        if run is None or self.stopping.is_set():
            return
        fire_time = last_fire_time(trigger_for(run, pipeline.loaded.schedule.timezone), self.app.clock())
        self._carry_out(name, fire_time, pipeline)

    def _catch_up(self) -> None:
        """Runs missed while no daemon was up: the latest of each, once (the ledger knows which happened)."""
        pipeline = self.pipeline
        now = self.app.clock()
        for run in pipeline.loaded.schedule.runs:
            missed = latest_fire_time(trigger_for(run, pipeline.loaded.schedule.timezone), now, CATCH_UP_HORIZON)
            if missed is not None and not self.stopping.is_set() and not self.app.runs.happened(run.name, missed):
                log.info("catching up on run %s of %s, missed while no daemon was running", run.name,
                         missed.isoformat())
                self._carry_out(run.name, missed, pipeline)

    def _take_over(self) -> None:
        """Runs whose daemon stopped renewing its lease: finish them here (nothing is sent twice)."""
        abandoned = self.app.runs.abandon_expired(self.app.clock())
        if abandoned:
            log.warning("run(s) %s abandoned: their daemon stopped renewing the lease",
                        ", ".join(f"#{run_id}" for run_id in abandoned))
        for name, fire_time in self.app.runs.orphaned(self.app.clock()):
            if self.stopping.is_set():
                return
            log.warning("taking over run %s of %s: its daemon stopped renewing the lease", name,
                        fire_time.isoformat())
            self._carry_out(name, fire_time, self.pipeline)

    def _fire_follow_up(self, due: datetime) -> None:
        if not self.stopping.is_set():
            self._carry_out(_FOLLOW_UP, due, self.pipeline)

    def _fire_now(self, name: str) -> None:
        if not self.stopping.is_set():
            self._carry_out(name, self.app.clock(), self.pipeline)

    def _carry_out(self, name: str, fire_time: datetime, pipeline: Pipeline) -> None:
        try:
            self.runner.run(name, fire_time, pipeline)
            self._follow_up()
        except DispatcherError as exc:
            log.error("run %s at %s failed: %s", name, fire_time.isoformat(), exc)
        except Exception:
            log.exception("run %s at %s failed unexpectedly", name, fire_time.isoformat())

    def _follow_up(self) -> None:
        """Schedule a run for the moment the earliest deferred reminder may go out.

        A reminder deferred by the contact window, a holiday or a cap goes out in the
        first run inside its allowed time, even when no scheduled run falls there (a
        New York borrower is outside the window at both of the shipped Shanghai runs).
        """
        due = self.app.ledger.next_deferral(self.app.clock(), FOLLOW_UP_HORIZON)
        if due is None or self.stopping.is_set():
            return
        current = self._scheduler.get_job(_FOLLOW_UP)
        if current is not None and current.next_run_time is not None and current.next_run_time <= due:
            return
        self._scheduler.add_job(self._fire_follow_up, "date", run_date=due, args=[due], id=_FOLLOW_UP,
                                replace_existing=True)
        log.info("follow-up run for deferred reminders scheduled at %s", due.isoformat())

    def _changed(self, loaded: LoadedSchedule) -> None:
        try:
            pipeline = self.app.build_pipeline(loaded)
        except DispatcherError as exc:
            log.error("configuration version %s refused: %s; keeping version %s",
                      loaded.version, exc, self.pipeline.loaded.version)
            return
        with self._lock:
            before = self.app.pipeline
            self.app.pipeline = pipeline
        self._schedule(loaded)
        log.info("configuration reloaded: version %s replaces %s (used from the next run)",
                 loaded.version, before.loaded.version)
        self._remember(loaded)
        if self.app.planners is not None:  # they wire the new version now, not in the next run
            self.app.planners.warm(loaded.version)
        self._log_diff(before, pipeline)

    def _remember(self, loaded: LoadedSchedule) -> None:
        """Keep a copy of the version now running in the ledger (``dispatcher diff`` compares with it)."""
        try:
            record_loaded(self.app.engine, loaded, self.app.clock())
        except DispatcherError as exc:
            log.error("configuration version %s runs but is not recorded: %s", loaded.version, exc)

    def _log_diff(self, before: Pipeline, after: Pipeline) -> None:
        """One line of what the edit changes now (``dispatcher diff``'s totals); a diff that fails changes nothing."""
        try:
            totals = Totals.of(changes_between(self.app, before, after, self.app.clock(), self._halt_if_stopping))
        except Exception as exc:
            log.warning("schedule edit %s -> %s: no diff of its reminders (%s: %s)", before.loaded.version,
                        after.loaded.version, type(exc).__name__, exc)
            log.debug("the diff failed", exc_info=True)
            return
        log.info("schedule edit %s -> %s: %s", before.loaded.version, after.loaded.version, totals.summary())

    def _halt_if_stopping(self) -> None:
        """Called for each account the diff plans: a stopping daemon does not wait for the rest."""
        if self.stopping.is_set():
            raise InterruptedError("the daemon is stopping")

    def _refused(self, error: ConfigError) -> None:
        for problem in error.problems:
            log.error("%s", problem)
        log.error("configuration edit refused (%d problem(s) in schedules.yaml or the templates); version %s "
                  "keeps running",
                  len(error.problems), self.pipeline.loaded.version)
