"""Headless Chromium for tests: find it, measure how a page lays out at a width, take screenshots.

Debian's ``chromium`` (``apt-get install -y chromium``; ``python3 scripts/dev.py test`` installs it
when it runs as root and ``/usr/bin/chromium`` is missing). Without it a test using :func:`chromium`
is skipped with a message, and fails in CI (``CI=true``). ``DISPATCHER_CHROMIUM`` names another binary.

A page is shown inside an ``<iframe srcdoc>`` exactly ``width`` CSS pixels wide: headless Chromium
never makes its window narrower than 500 px, so a 375 px phone screen is an iframe, not a window.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

CI = os.environ.get("CI") == "true"
ENV_BINARY = "DISPATCHER_CHROMIUM"
"""An explicit Chromium or Chrome binary, instead of the first of :data:`CANDIDATES` found."""
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "apt-get install -y chromium (python3 scripts/dev.py test does it when run as root)"
TIMEOUT = 30.0
"""Seconds one Chromium run may take before the test fails."""
SCREEN_HEIGHT = 1600
"""Height of screenshots, in CSS pixels: a whole reminder email at 375 px."""

_FLAGS = (
    "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--no-default-browser-check",
    "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio", "--force-device-scale-factor=1",
)
_RESULT = re.compile(r'<pre id="layout">(.*?)</pre>', re.S)
_MEASURE = """
window.addEventListener("load", function () {
  var results = [];
  document.querySelectorAll("iframe").forEach(function (frame) {
    var doc = frame.contentDocument, view = doc.documentElement.clientWidth, right = 0, widest = "";
    doc.querySelectorAll("body *").forEach(function (el) {
      var box = el.getBoundingClientRect();
      if (box.width > 0 && box.right > right) {
        right = box.right;
        widest = "<" + el.tagName.toLowerCase() + "> " + (el.textContent || "").trim().slice(0, 80);
      }
    });
    results.push({width: view, scroll_width: doc.documentElement.scrollWidth, right: right, widest: widest});
  });
  var out = document.createElement("pre");
  out.id = "layout";
  out.textContent = JSON.stringify(results);
  document.body.appendChild(out);
});
"""


@dataclass(frozen=True, slots=True)
class Layout:
    """How a page laid out in a viewport ``width`` CSS pixels wide."""

    width: int
    scroll_width: int
    right: float
    """The right edge of the element reaching furthest right."""
    widest: str
    """That element's tag and the start of its text."""

    @property
    def overflows(self) -> bool:
        """Whether the page scrolls sideways or an element sticks out of the viewport (half a pixel allowed)."""
        return self.scroll_width > self.width or self.right > self.width + 0.5


def find_chromium() -> str | None:
    """The Chromium binary to use, or None when there is none."""
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        return explicit
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def chromium() -> Browser:
    """A :class:`Browser`; skips the test without Chromium (fails it in CI)."""
    binary = find_chromium()
    if binary is None:
        message = f"headless Chromium not found (install it: {INSTALL_HINT})"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return Browser(binary)


def _frame(page: str, width: int, height: int) -> str:
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" '
            f'style="display:block;border:0;margin:0;width:{width}px;height:{height}px"></iframe>')


def _wrapper(page: str, widths: tuple[int, ...], height: int, measure: bool) -> str:
    frames = "".join(_frame(page, width, height) for width in widths)
    script = f"<script>{_MEASURE}</script>" if measure else ""
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><style>html,body{{margin:0;padding:0}}</style>'
            f"</head><body>{frames}{script}</body></html>")


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG image, from its header."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


class Browser:
    """Runs headless Chromium once per call, with a fresh profile each time."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def layouts(self, page: str, widths: tuple[int, ...]) -> list[Layout]:
        """How ``page`` (a whole HTML document) lays out at each of ``widths``, in one Chromium run."""
        dom = self._run(_wrapper(page, widths, SCREEN_HEIGHT, measure=True), "--dump-dom",
                        window=(max(widths), SCREEN_HEIGHT))
        found = _RESULT.search(dom)
        assert found, f"Chromium did not run the measuring script: {dom[:500]!r}"
        return [Layout(**item) for item in json.loads(html.unescape(found.group(1)))]

    def screenshot(self, page: str, width: int, path: Path, height: int = SCREEN_HEIGHT) -> Path:
        """A PNG of ``page`` shown ``width`` CSS pixels wide, its top ``height`` pixels."""
        self._run(_wrapper(page, (width,), height, measure=False), f"--screenshot={path}", window=(width, height))
        assert path.is_file(), f"Chromium wrote no screenshot to {path}"
        return path

    def _run(self, wrapper: str, *args: str, window: tuple[int, int]) -> str:
        with tempfile.TemporaryDirectory(prefix="chromium-") as folder:
            page = Path(folder) / "page.html"
            page.write_text(wrapper, encoding="utf-8")
            command = [self.binary, *_FLAGS, f"--user-data-dir={folder}/profile",
                       f"--window-size={window[0]},{window[1]}", *args, page.as_uri()]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}"
        return done.stdout
