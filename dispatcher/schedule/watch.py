"""Re-read schedules.yaml and its templates when they change, keeping the last good version running.

:class:`ScheduleWatcher` polls the stat signatures of the schedule file and of
every ``*.j2`` file under the templates directory (added and removed files
included) from a daemon thread. When they change and have settled it hashes the
content and, for new content, loads it and calls ``on_change`` (valid) or
``on_error`` (invalid). Editors that save by writing a temporary file and
renaming it over the original, and a moment where a file does not exist, are
both fine.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from dispatcher.compose.layout import TemplateSet, template_files
from dispatcher.errors import ConfigError
from dispatcher.schedule.loader import LoadedSchedule, configuration_digest, templates_dir_of
from dispatcher.schedule.yaml_limits import DEFAULT_MAX_FILE_BYTES

DEFAULT_INTERVAL = 1.0
"""Seconds between two looks at the files."""

log = logging.getLogger(__name__)

FileSignature = tuple[int, int, int]
Signature = tuple[FileSignature, tuple[tuple[str, FileSignature], ...]]


def _stat(path: Path) -> FileSignature | None:
    """``(st_mtime_ns, st_size, st_ino)`` of the file, or ``None`` while it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _signature(path: Path, templates_dir: Path) -> Signature | None:
    """The schedule file's signature and each template's, by name; ``None`` while the schedule file is absent."""
    own = _stat(path)
    if own is None:
        return None
    found = ((name, _stat(file)) for name, file in template_files(templates_dir))
    return own, tuple((name, stat) for name, stat in found if stat is not None)


def _digest(path: Path, templates_dir: Path) -> str | None:
    """The digest of the schedule file and its templates, or ``None`` while the schedule file is absent."""
    try:
        with path.open("rb") as stream:  # a file past the size limit is refused by the loader: no need to read it all
            content = stream.read(DEFAULT_MAX_FILE_BYTES + 1) + str(os.fstat(stream.fileno()).st_size).encode()
    except OSError:
        return None
    return configuration_digest(content, TemplateSet.read(templates_dir))


class ScheduleWatcher:
    """Polls ``path`` and ``templates_dir`` every ``interval`` seconds and reports new content.

    ``templates_dir`` defaults to ``templates/`` beside ``path``. ``load`` is
    called with the path for each new content; it returns a
    :class:`LoadedSchedule` or raises :class:`ConfigError`. ``on_change``
    receives a valid schedule, ``on_error`` the error of an invalid one; both
    run on the watcher thread. Rewriting the same content calls neither. A
    change is acted on once two looks in a row see the same files, so a file
    saved in several writes, or briefly absent, is read complete.
    """

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], LoadedSchedule],
        on_change: Callable[[LoadedSchedule], None],
        on_error: Callable[[ConfigError], None],
        *,
        interval: float = DEFAULT_INTERVAL,
        templates_dir: Path | None = None,
    ) -> None:
        self.path = path
        self.templates_dir = templates_dir if templates_dir is not None else templates_dir_of(path)
        self.interval = interval
        self._load = load
        self._on_change = on_change
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="schedule-watcher", daemon=True)
        self._signature: Signature | None = None
        self._pending: Signature | None = None
        self._digest: str | None = None

    @property
    def running(self) -> bool:
        """Whether the polling thread is alive."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Take the current files as the baseline and start polling."""
        self._signature = _signature(self.path, self.templates_dir)
        self._digest = _digest(self.path, self.templates_dir)
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
        """Look at the files once; load and report them if they changed, settled, and their content is new."""
        signature = _signature(self.path, self.templates_dir)
        if signature is None or signature == self._signature:
            self._pending = None
            return
        if signature != self._pending:
            self._pending = signature  # changed since the last look: wait until it settles
            return
        digest = _digest(self.path, self.templates_dir)
        if digest is None:
            return
        self._signature, self._pending = signature, None
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
