"""The outbox: the embedded default channel, writing messages to local files.

``sms.jsonl``, ``push.jsonl`` and ``voice.jsonl`` (with each call's ``twiml``) get one JSON object per
line and message; emails become ``email/<attempt>-<account>.eml`` files a mail client opens. It answers like
a provider (a message id per message), is recorded in the ledger like one, and can
be asked after a crash whether it took the message of an attempt
(:class:`~dispatcher.channels.base.AttemptLookup`).

Writes are whole or absent when the writing process dies (kill -9): a JSON line is
one ``write(2)`` on a descriptor opened with ``O_APPEND``, an ``.eml`` is written
under a temporary name (``.<name>.<pid>-<thread>.tmp``) and renamed into place.
Nothing is fsynced, so durability against power loss is not promised. A line torn
anyway (a power loss, a full disk, a kill landing between the pages of one write,
an older version) is ended by the next writer that opens the file and skipped by
readers; leftover temporary files are ignored. Several processes may append to one
file (a run's planning helpers deliver too): a writer that opens the file while
another's line is half copied into it waits for that line's end (up to
:data:`TAIL_SETTLE`) before taking it for torn, so it adds no empty line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import DeliveryResult, Message
from dispatcher.channels.eml import eml_bytes
from dispatcher.channels.headers import UNSAFE_HEADER, UnsafeHeaderError
from dispatcher.channels.voice_script import CallScript
from dispatcher.errors import DeliveryError

DEFAULT_EMAIL_FROM = "reminders@localhost"
"""Sender written into outbox emails when ``EMAIL_FROM`` is not set."""

READ_CHUNK = 1 << 20
"""Bytes read at a time when indexing a JSONL file."""

TAIL_SETTLE = (0.002, 0.01, 0.05, 0.2)
"""Pauses (seconds) before a file's unended last line is taken for torn: another process may be writing it (a line
crossing a page boundary shows its first page before its end)."""

_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)

_T = TypeVar("_T")


class OutboxChannel:
    """Writes each message of one channel kind under ``directory``; says which attempts it took."""

    provider = "outbox"

    def __init__(self, kind: ChannelKind, directory: Path, email_from: str = DEFAULT_EMAIL_FROM,
                 script: CallScript | None = None) -> None:
        self.kind = kind
        self.directory = directory
        self.email_from = email_from
        self.script = script or CallScript()
        """What calls say (``voice.jsonl`` records each call's TwiML)."""
        self._lines: _LineWriter | None = None
        self._index = _AttemptIndex(self.directory / f"{kind.value}.jsonl")
        self._email_folder_made = False
        self._threads: ThreadPoolExecutor | None = None

    async def send(self, message: Message) -> DeliveryResult:
        try:
            if self.kind is ChannelKind.EMAIL:
                self._write_email(message)
            else:
                self._write_line(message)
        except UnsafeHeaderError as exc:
            return DeliveryResult.permanent(UNSAFE_HEADER, str(exc))
        except OSError as exc:
            return DeliveryResult.transient("outbox_io", f"cannot write the outbox: {exc}")
        return DeliveryResult.sent(self._message_id(message.attempt_id))

    async def find_attempt(self, attempt_id: int) -> str | None:
        """The message id of ``attempt_id`` when the outbox holds its message, else ``None``.

        Email: an ``email/<attempt>-*.eml`` file exists. SMS and push: a line of the
        JSONL file carries that ``attempt_id`` (read once per channel object, then
        only what was appended since). Raises :class:`DeliveryError` when the
        outbox cannot be read.
        """
        try:
            taken = await self._in_thread(functools.partial(self._taken, attempt_id))
        except OSError as exc:
            raise DeliveryError(f"cannot read the outbox: {exc}", code="outbox_io", attempt_id=attempt_id) from exc
        return self._message_id(attempt_id) if taken else None

    async def aclose(self) -> None:
        if self._lines is not None:
            self._lines.close()
            self._lines = None
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None

    def _message_id(self, attempt_id: int) -> str:
        return f"outbox-{self.kind.value}-{attempt_id}"

    def _taken(self, attempt_id: int) -> bool:
        if self.kind is ChannelKind.EMAIL:
            return _email_written(self.directory / "email", attempt_id)
        return self._index.contains(attempt_id)

    async def _in_thread(self, function: Callable[[], _T]) -> _T:
        """Run ``function`` on a helper thread: scanning the outbox is slow and releases the GIL."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="outbox-files")
        return await asyncio.get_running_loop().run_in_executor(self._threads, function)

    def _write_line(self, message: Message) -> None:
        if self._lines is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lines = _LineWriter(self.directory / f"{self.kind.value}.jsonl")
        record: dict[str, object] = {
            "attempt_id": message.attempt_id,
            "reminder": message.reminder_key,
            "account_id": message.account_id,
            "to": message.to,
            "text": message.body,
        }
        if self.kind is ChannelKind.PUSH:
            record["title"] = message.title
            record["data"] = dict(message.data)
        if self.kind is ChannelKind.VOICE:
            record["greeting"] = message.title
            record["twiml"] = self.script.twiml(message)
        self._lines.append((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def _write_email(self, message: Message) -> None:
        folder = self.directory / "email"
        if not self._email_folder_made:
            folder.mkdir(parents=True, exist_ok=True)
            self._email_folder_made = True
        safe_account = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in message.account_id)
        path = folder / f"{message.attempt_id:08d}-{safe_account}.eml"
        data = eml_bytes(message, self.email_from, datetime.now(UTC))
        # on the loop's thread, as the lines are: handing a small write to a thread and back costs more (the two
        # threads pass the GIL back and forth; the benchmark's runs took 10 % more CPU) than the write itself
        _write_atomically(path, data)


class _LineWriter:
    """Appends whole lines to one file through one ``O_APPEND`` descriptor, one ``write(2)`` per line.

    When the file does not end with a newline on opening, nor after the pauses of
    :data:`TAIL_SETTLE` (a torn last line, not one being written), the first line
    written starts with one, so it is a line of its own.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, _APPEND_FLAGS, 0o666)
        try:
            self._torn = not _ends_with_newline(self._fd)
            for pause in TAIL_SETTLE if self._torn else ():
                time.sleep(pause)
                self._torn = not _ends_with_newline(self._fd)
                if not self._torn:
                    break
        except OSError:
            os.close(self._fd)
            raise

    def append(self, line: bytes) -> None:
        """Write ``line`` (ending with ``\\n``); a short write (full disk, signal) is completed or marked torn."""
        data = memoryview(b"\n" + line if self._torn else line)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        finally:
            if done:
                self._torn = done < len(data)

    def close(self) -> None:
        os.close(self._fd)


def _ends_with_newline(fd: int) -> bool:
    """Whether the file is empty or its last byte is ``\\n`` (reads through ``fd``, opened read-write)."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return True
    os.lseek(fd, size - 1, os.SEEK_SET)
    return os.read(fd, 1) == b"\n"


class _AttemptIndex:
    """The attempt ids recorded in one JSONL file: read once, then extended from the offset read so far.

    Only lines ended by ``\\n`` are read (an unended tail may still be being
    written); lines that are not a JSON object with an integer ``attempt_id`` are
    skipped. A file replaced or truncated since is read again from the start.
    Thread-safe.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ids: set[int] = set()
        self._offset = 0
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def contains(self, attempt_id: int) -> bool:
        """Whether the file now holds a record of ``attempt_id``; raises ``OSError`` when it cannot be read."""
        with self._lock:
            self._refresh()
            return attempt_id in self._ids

    def _refresh(self) -> None:
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            self._reset(None)
            return
        with file:
            status = os.fstat(file.fileno())
            identity = (status.st_dev, status.st_ino)
            if identity != self._identity or status.st_size < self._offset:
                self._reset(identity)
            file.seek(self._offset)
            self._offset += self._read_lines(file)

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self._ids.clear()
        self._offset = 0
        self._identity = identity

    def _read_lines(self, file: BinaryIO) -> int:
        """Index the whole lines from the file's position on; returns the bytes they take."""
        read = 0
        rest = b""
        while chunk := file.read(READ_CHUNK):
            read += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            self._ids.update(_attempt_ids(lines))
        return read - len(rest)


def _attempt_ids(lines: list[bytes]) -> list[int]:
    """The attempt ids of the whole records among ``lines``.

    Parsed as one JSON array (twice as fast as line by line), and line by line
    when that fails or counts other than one value per line: a torn record
    followed by ``,{"attempt_id"`` is never valid JSON, so a torn line always
    fails the array.
    """
    try:
        records = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        records = None
    if not isinstance(records, list) or len(records) != len(lines):
        records = [_record(line) for line in lines]
    return [found for found in map(_attempt_id, records) if found is not None]


def _record(line: bytes) -> object:
    """One JSONL line parsed, ``None`` for a torn or foreign line."""
    try:
        return json.loads(line)
    except ValueError:
        return None


def _attempt_id(record: object) -> int | None:
    found = record.get("attempt_id") if isinstance(record, dict) else None
    return found if type(found) is int else None


def _email_written(folder: Path, attempt_id: int) -> bool:
    """Whether ``folder`` holds ``<attempt_id:08d>-*.eml`` (temporary files do not count)."""
    prefix = f"{attempt_id:08d}-"
    try:
        with os.scandir(folder) as entries:
            return any(entry.name.startswith(prefix) and entry.name.endswith(".eml") for entry in entries)
    except FileNotFoundError:
        return False


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file in its directory renamed into place: it is whole or absent."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
