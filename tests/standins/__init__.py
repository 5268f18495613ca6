"""Wire-level stand-ins for the real providers, each serving loopback in a background thread.

``HttpStandin`` is the shared base of the Twilio and FCM stand-ins: a stdlib
``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, Nagle disabled, see PRODUCT.md)
that records every request and asks the subclass's :meth:`HttpStandin.respond`
for the answer. Use a stand-in as a context manager, or call ``start()`` and
``close()``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    """One HTTP request as the stand-in received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    in_flight: int = 0
    """Requests being answered when this one arrived, itself included."""

    @property
    def form(self) -> dict[str, str]:
        """The form-encoded body, one value per field."""
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8"), keep_blank_values=True).items()}

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """What the stand-in answers: status, JSON body and extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        request = Recorded(self.command, url.path, parse_qs(url.query), dict(self.headers.items()), body)
        standin = self.server.standin
        with standin.lock:
            standin.in_flight += 1
            standin.peak_in_flight = max(standin.peak_in_flight, standin.in_flight)
            request.in_flight = standin.in_flight
            standin.requests.append(request)
            reply = standin.respond(request)
        try:
            if standin.delay and standin.stopped.wait(standin.delay):
                return
            self._write(reply)
        finally:
            with standin.lock:
                standin.in_flight -= 1

    def _write(self, reply: Reply) -> None:
        data = json.dumps(reply.body).encode("utf-8")
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests assert on ``requests``, not on logs."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: HttpStandin


class HttpStandin:
    """Base of the HTTP stand-ins; subclasses implement :meth:`respond` (called under ``lock``)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.lock = threading.RLock()
        self.delay = 0.0
        """Seconds to wait before answering, to make a client time out."""
        self.in_flight = 0
        self.peak_in_flight = 0
        """The most requests answered at once."""
        self.stopped = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.standin = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def respond(self, request: Recorded) -> Reply:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self.stopped.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
