"""A Celery worker runs exactly the configuration version a task names (dispatcher/worker.py).

The daemon plans with its schedules.yaml; a worker on another machine may have an older or newer
file. A run that hands work to the broker stores its version in the ledger (``App.executor``), and
the worker delivers with that copy, wired once per version: neither the wrong texts nor a rebuild
per task. The worker runtime is driven in this process, as a pool process drives it (its Celery
wrapper and a real worker are tested in test_worker_cli.py).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import FixedClock
from sqlalchemy import select

from dispatcher.app import App
from dispatcher.demo import seed_demo
from dispatcher.errors import ConfigError
from dispatcher.ledger import config_versions
from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.executors import task_payload

V1_BRAND, V2_BRAND = "Xinyong Wallet", "Renamed Wallet"
"""The English brand name as shipped, and as an edit on the worker's machine renames it."""


def book(app: App, clock: FixedClock) -> tuple[int, list[int]]:
    """A run's first batch, planned and booked as the daemon does with the app's version: (run id, attempt ids)."""
    seed_demo(app.engine, 30, clock().date())
    run_id = app.runs.start("morning", clock(), app.pipeline.loaded.version, "daemon", clock())
    assert run_id is not None
    (batch,) = list(app.pipeline.source.batches())
    decisions = app.pipeline.planner.plan(batch.accounts, app.ledger.load_history(batch.accounts), clock())
    jobs, _ = app.booker().book(decisions, run_id, clock())
    assert len(jobs) >= 4
    return run_id, [job.attempt_id for job in jobs]


def statuses(app: App, ids: list[int]) -> set[str]:
    with app.engine.connect() as connection:
        return {row.status for row in connection.execute(select(attempts.c.status).where(attempts.c.id.in_(ids)))}


def english_texts(app: App) -> list[str]:
    """The outbox's SMS and push texts and titles that carry the English brand, either name."""
    found: list[str] = []
    for kind in ("sms", "push"):
        path = app.settings.outbox_dir / f"{kind}.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            record = json.loads(line)
            found += [t for t in (record["text"], record.get("title", "")) if V1_BRAND in t or V2_BRAND in t]
    return found


def rename_brand(schedules: Path) -> None:
    """An edit on this machine only, so its schedules.yaml is another version than the daemon planned with."""
    text = schedules.read_text(encoding="utf-8")
    assert f"name: {V1_BRAND}" in text
    schedules.write_text(text.replace(f"name: {V1_BRAND}", f"name: {V2_BRAND}"), encoding="utf-8")


def test_a_run_handing_work_to_the_broker_stores_its_version_once(app: App, clock: FixedClock,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    version = app.pipeline.loaded.version
    app.executor(app.pipeline)  # delivery in this process: nobody needs a copy
    assert config_versions.fetch(app.engine, version) is None

    monkeypatch.setattr(app, "settings", dataclasses.replace(app.settings, broker_url="redis://127.0.0.1:1/0"))
    app.executor(app.pipeline)  # only wired: nothing is published, so the dead broker is not asked
    stored = config_versions.fetch(app.engine, version)
    assert stored is not None and stored.content() == app.pipeline.loaded.path.read_bytes()
    assert config_versions.load_stored(stored, app.settings.env).version == version

    clock.now += timedelta(days=1)
    app.executor(app.pipeline)  # a later run or a retry leaves the copy as it was
    again = config_versions.fetch(app.engine, version)
    assert again is not None and again.last_loaded_at == stored.last_loaded_at


def test_a_worker_whose_file_differs_delivers_the_version_the_task_names_wired_once(
        anytime: Path, app: App, clock: FixedClock, runtime_factory: Any) -> None:
    run_id, ids = book(app, clock)
    version = app.pipeline.loaded.version
    assert config_versions.ensure_recorded(app.engine, app.pipeline.loaded, clock())
    rename_brand(anytime)
    runtime = runtime_factory()
    own = runtime.app.pipeline.loaded.version
    assert own != version

    half = len(ids) // 2
    first = runtime.deliver(task_payload(version, run_id, ids[:half]))
    wired = runtime.wired[version]
    assert runtime.app.pipeline is wired[0] and runtime.app.pipeline.loaded.version == version
    second = runtime.deliver(task_payload(version, run_id, ids[half:]))  # the next task: nothing rebuilt
    assert runtime.wired[version] is wired and runtime.app.pipeline is wired[0]
    assert set(runtime.wired) == {own, version}

    assert statuses(app, ids) == {"sent"} and first["sent"] + second["sent"] == len(ids)
    texts = english_texts(app)
    assert texts and all(V1_BRAND in text for text in texts)  # the planned version's words, not this file's


def test_a_version_neither_here_nor_in_the_ledger_is_refused_and_its_attempts_stay_planned(
        anytime: Path, app: App, clock: FixedClock, runtime_factory: Any) -> None:
    run_id, ids = book(app, clock)  # not stored: this run never handed work to a broker
    version = app.pipeline.loaded.version
    rename_brand(anytime)
    runtime = runtime_factory()
    with pytest.raises(ConfigError, match=f"version {version} is neither"):
        runtime.deliver(task_payload(version, run_id, ids))
    assert statuses(app, ids) == {"planned"}
    failures, error = app.runs.task_failures(run_id)
    assert failures == 1 and error is not None and version in error
    assert runtime.app.pipeline.loaded.version != version  # it keeps delivering its own version's tasks
