"""Run records: each scheduled run (name, fire time) fires once, under a lease its daemon renews.

Several daemons may run side by side. The first to insert (name, fire_time)
carries the run out and renews its lease while it works; if it dies, the lease
runs out and another daemon takes the run over. A takeover repeats planning, not
sending: every reminder is claimed in the ledger, so nothing goes out twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import LedgerError
from dispatcher.ledger.tables import runs

DEFAULT_LEASE = timedelta(seconds=60)
"""How long a run stays its daemon's without renewal."""


class RunLedger:
    """Starting, renewing, taking over and finishing runs."""

    def __init__(self, engine: Engine, lease: timedelta = DEFAULT_LEASE) -> None:
        self.engine = engine
        self.lease = lease

    def start(self, name: str, fire_time: datetime, version: str, daemon_id: str, now: datetime) -> int | None:
        """Own run (name, fire_time): a new run, or one whose daemon's lease ran out. ``None``: not ours."""
        row = {"name": name, "fire_time": fire_time, "status": "running", "config_version": version,
               "daemon_id": daemon_id, "started_at": now, "lease_until": now + self.lease, "takeovers": 0}
        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        insert = dialect.insert(runs).on_conflict_do_nothing().returning(runs.c.id)
        takeover = (
            update(runs)
            .where(runs.c.name == name, runs.c.fire_time == fire_time, runs.c.status == "running",
                   or_(runs.c.lease_until.is_(None), runs.c.lease_until < now))
            .values(daemon_id=daemon_id, lease_until=now + self.lease, takeovers=runs.c.takeovers + 1)
            .returning(runs.c.id)
        )
        try:
            with self.engine.begin() as connection:
                found = connection.execute(insert, [row]).all() or connection.execute(takeover).all()
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot start run {name}: {exc}") from exc
        return int(found[0].id) if found else None

    def renew(self, run_id: int, daemon_id: str, now: datetime) -> bool:
        """Extend the lease; False when another daemon has taken the run over."""
        try:
            with self.engine.begin() as connection:
                moved = connection.execute(
                    update(runs).where(runs.c.id == run_id, runs.c.daemon_id == daemon_id)
                    .values(lease_until=now + self.lease)).rowcount
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot renew run {run_id}: {exc}") from exc
        return bool(moved)

    def finish(self, run_id: int, status: str, counts: Mapping[str, int], now: datetime,
               daemon_id: str | None = None) -> bool:
        """Record the run's end; False (and nothing written) when another daemon has taken it over.

        ``daemon_id`` None finishes the run whoever holds it (tools, tests).
        """
        owner = runs.c.daemon_id == daemon_id if daemon_id is not None else runs.c.id == run_id
        try:
            with self.engine.begin() as connection:
                moved = connection.execute(
                    update(runs).where(runs.c.id == run_id, owner)
                    .values(status=status, finished_at=now, lease_until=None,
                            counts=json.dumps(dict(counts), sort_keys=True))).rowcount
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot finish run {run_id}: {exc}") from exc
        return bool(moved)

    def happened(self, name: str, fire_time: datetime) -> bool:
        """Whether run (name, fire_time) was started by any daemon."""
        with self.engine.connect() as connection:
            return connection.execute(
                select(runs.c.id).where(and_(runs.c.name == name, runs.c.fire_time == fire_time))).first() is not None

    def orphaned(self, now: datetime) -> list[tuple[str, datetime]]:
        """Runs still marked running whose lease ran out: their daemon died."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(runs.c.name, runs.c.fire_time).where(runs.c.status == "running", runs.c.lease_until < now))
            return [(row.name, row.fire_time) for row in rows]
