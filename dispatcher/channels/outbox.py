"""The outbox: the embedded default channel, writing messages to local files.

``sms.jsonl`` and ``push.jsonl`` get one JSON object per message; emails become
``email/<attempt>-<account>.eml`` files a mail client opens. It answers like a
provider (a message id per message) and is recorded in the ledger like one.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from dispatcher.channels.base import ChannelKind, DeliveryResult, Message
from dispatcher.channels.eml import eml_bytes

DEFAULT_EMAIL_FROM = "reminders@localhost"
"""Sender written into outbox emails when ``EMAIL_FROM`` is not set."""


class OutboxChannel:
    """Writes each message of one channel kind under ``directory``."""

    provider = "outbox"

    def __init__(self, kind: ChannelKind, directory: Path, email_from: str = DEFAULT_EMAIL_FROM) -> None:
        self.kind = kind
        self.directory = directory
        self.email_from = email_from
        self._lines: IO[str] | None = None
        self._files: ThreadPoolExecutor | None = None

    async def send(self, message: Message) -> DeliveryResult:
        try:
            if self.kind is ChannelKind.EMAIL:
                await self._write_email(message)
            else:
                self._write_line(message)
        except OSError as exc:
            return DeliveryResult.transient("outbox_io", f"cannot write the outbox: {exc}")
        return DeliveryResult.sent(f"outbox-{self.kind.value}-{message.attempt_id}")

    async def aclose(self) -> None:
        if self._lines is not None:
            self._lines.close()
            self._lines = None
        if self._files is not None:
            self._files.shutdown(wait=True)
            self._files = None

    def _write_line(self, message: Message) -> None:
        if self._lines is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lines = (self.directory / f"{self.kind.value}.jsonl").open("a", encoding="utf-8")
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
        self._lines.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._lines.flush()

    async def _write_email(self, message: Message) -> None:
        """Write the .eml file on a helper thread: file creation is slow and releases the GIL."""
        folder = self.directory / "email"
        if self._files is None:
            folder.mkdir(parents=True, exist_ok=True)
            self._files = ThreadPoolExecutor(max_workers=2, thread_name_prefix="outbox-email")
        safe_account = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in message.account_id)
        path = folder / f"{message.attempt_id:08d}-{safe_account}.eml"
        data = eml_bytes(message, self.email_from, datetime.now(UTC))
        await asyncio.get_running_loop().run_in_executor(self._files, path.write_bytes, data)
