"""Progress of long commands on a terminal: one line on stderr, redrawn with ``\\r``.

Only when stderr is a terminal: into a pipe, a file or a log nothing is written, so
``dispatcher seed-demo --accounts 100000 2>log`` stays clean. A ticker thread redraws
the line a few times a second (elapsed time, and the count with its rate once there is
one); :meth:`Progress.advance` may be called from any thread. The line is erased when
the work ends, so the command's own output follows on a clean line.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

REFRESH_SECONDS = 0.2
"""How often the line is redrawn."""
SPINNER = "|/-\\"


class Progress:
    """``with Progress("seeding", total=n) as bar: ... bar.advance(k)``; silent unless ``stream`` is a terminal."""

    def __init__(self, label: str, *, total: int | None = None, unit: str = "", stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.shown = enabled and _isatty(self.stream)
        self._started = time.monotonic()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._ticks = 0
        self._width = 0
        self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)

    def __enter__(self) -> Progress:
        if self.shown:
            for handler in self._handlers():
                handler.addFilter(self._erase_before)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def advance(self, amount: int = 1) -> None:
        with self._lock:
            self.count += amount

    def line(self) -> str:
        """The text shown now: label, count (of total, percent, rate) and elapsed time."""
        elapsed = time.monotonic() - self._started
        parts = [f"{SPINNER[self._ticks % len(SPINNER)]} {self.label}"]
        if self.total:
            parts.append(f"{self.count:,}/{self.total:,}{self.unit} {_bar(self.count / self.total)} "
                         f"{min(100, 100 * self.count // self.total)}%")
        elif self.count:
            parts.append(f"{self.count:,}{self.unit}")
        if self.count and elapsed >= 1:
            parts.append(f"{self.count / elapsed:,.0f}/s")
        parts.append(f"{int(elapsed) // 60}:{int(elapsed) % 60:02d}")
        return "  ".join(parts)

    def close(self) -> None:
        """Stop redrawing and erase the line; idempotent."""
        if self._done.is_set():
            return
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
            for handler in self._handlers():
                handler.removeFilter(self._erase_before)
            self._erase()

    def _handlers(self) -> list[logging.Handler]:
        """The log handlers writing to our stream: their records would land on the progress line."""
        return [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and h.stream is self.stream]

    def _erase_before(self, _record: logging.LogRecord) -> bool:
        """A log record gets a clean line (the next tick draws the progress again below it)."""
        self._erase()
        return True

    def _erase(self) -> None:
        self._write("\r" + " " * self._width + "\r")

    def _tick(self) -> None:
        while not self._done.wait(REFRESH_SECONDS if self._ticks else 0):
            text = self.line()
            self._ticks += 1
            self._write("\r" + text.ljust(self._width))
            self._width = max(self._width, len(text))

    def _write(self, text: str) -> None:
        if not self.shown:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the work goes on
            self.shown = False


def _bar(share: float, width: int = 20) -> str:
    full = int(min(max(share, 0.0), 1.0) * width)
    return "[" + "#" * full + "." * (width - full) + "]"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
