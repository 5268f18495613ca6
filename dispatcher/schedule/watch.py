"""Re-read schedules.yaml when it changes, keeping the last good version running.

:class:`ScheduleWatcher` polls the file's stat signature from a daemon thread;
when it changes it hashes the content and, for new content, loads it and calls
``on_change`` (valid) or ``on_error`` (invalid). Editors that save by writing a
temporary file and renaming it over the original, and a moment where the file
does not exist, are both fine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from dispatcher.errors import ConfigError
from dispatcher.schedule.loader import LoadedSchedule

DEFAULT_INTERVAL = 1.0
"""Seconds between two looks at the file."""

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]


def _signature(path: Path) -> Signature | None:
    """``(st_mtime_ns, st_size, st_ino)`` of the file, or ``None`` while it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ScheduleWatcher:
    """Polls ``path`` every ``interval`` seconds and reports new content.

    ``load`` is called with the path for each new content; it returns a
    :class:`LoadedSchedule` or raises :class:`ConfigError`. ``on_change``
    receives a valid schedule, ``on_error`` the error of an invalid one; both
    run on the watcher thread. Rewriting the same content calls neither.
    """

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], LoadedSchedule],
        on_change: Callable[[LoadedSchedule], None],
        on_error: Callable[[ConfigError], None],
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.path = path
        self.interval = interval
        self._load = load
        self._on_change = on_change
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="schedule-watcher", daemon=True)
        self._signature: Signature | None = None
        self._digest: str | None = None

    @property
    def running(self) -> bool:
        """Whether the polling thread is alive."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Take the current file as the baseline and start polling."""
        self._signature = _signature(self.path)
        self._digest = _digest(self.path)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the thread (and any callback in progress) to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> ScheduleWatcher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:
                log.exception("watching %s failed; will look again", self.path)

    def poll(self) -> None:
        """Look at the file once; load and report it if its content changed."""
        signature = _signature(self.path)
        if signature is None or signature == self._signature:
            return
        digest = _digest(self.path)
        if digest is None:
            return
        self._signature = signature
        if digest == self._digest:
            return
        self._digest = digest
        self._reload()

    def _reload(self) -> None:
        try:
            loaded = self._load(self.path)
        except ConfigError as error:
            self._on_error(error)
        else:
            self._on_change(loaded)
