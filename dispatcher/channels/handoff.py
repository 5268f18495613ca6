"""The hand-off channel: a due reminder of a ``handoff:`` step opens a work item for people.

Its "address" is the account id and its "message" the work item's fields
(:mod:`dispatcher.compose.handoff`), so a hand-off is planned, claimed, re-checked
(pauses, window, holidays, caps) and recorded like any reminder: once per
occurrence, with its reason when it is not made. :meth:`HandoffChannel.send` writes
the work item into the ledger's ``handoffs`` table (the same one again for the same
reminder) and, when ``DISPATCHER_CRM_URL`` is set, POSTs it there as JSON signed
with ``X-Dispatcher-Signature: sha256=<hex HMAC-SHA256 of the body under
DISPATCHER_CRM_SECRET>`` (and ``Idempotency-Key: handoff-<id>``). A CRM answering
429, 5xx or not at all is retried like a provider; 4xx fails the attempt (the work
item stays open in the ledger and ``dispatcher retry`` pushes it again).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

import aiohttp
from sqlalchemy import Engine

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import DeliveryResult, Message
from dispatcher.channels.provider_settings import _positive_float, _Problems, parse_retry_after
from dispatcher.errors import DeliveryError, LedgerError
from dispatcher.ledger.handoffs import HandoffOpener, WorkItem, handoff_of_attempt, record_push

DEFAULT_CRM_TIMEOUT = 10.0
"""Seconds one POST to the CRM may take before it counts as a transient failure."""

SIGNATURE_HEADER = "X-Dispatcher-Signature"
"""The header carrying ``sha256=<hex>``: HMAC-SHA256 of the request body under ``DISPATCHER_CRM_SECRET``."""

PROVIDER = "handoff"
"""The provider name of hand-offs (attempts, rate limits)."""


@dataclass(frozen=True)
class CrmSettings:
    """Where work items are pushed (``DISPATCHER_CRM_URL``) and the secret that signs them."""

    url: str
    secret: bytes = field(repr=False)
    timeout: float = DEFAULT_CRM_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CrmSettings | None:
        """``None`` without ``DISPATCHER_CRM_URL``; raises ConfigError for a bad URL or a missing secret."""
        p = _Problems(env)
        if p.get("DISPATCHER_CRM_URL") is None:
            return None
        secret = p.get("DISPATCHER_CRM_SECRET")
        if secret is None:
            p.add("DISPATCHER_CRM_SECRET", "required when DISPATCHER_CRM_URL is set (work items are pushed signed)")
        settings = cls(url=p.url("DISPATCHER_CRM_URL", ""), secret=(secret or "").encode(),
                       timeout=p.parse("DISPATCHER_CRM_TIMEOUT", _positive_float, DEFAULT_CRM_TIMEOUT))
        p.raise_if_any()
        return settings


def sign(secret: bytes, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def provider_id(handoff_id: int) -> str:
    """How an attempt records the work item it opened."""
    return f"handoff:{handoff_id}"


def work_item(message: Message) -> WorkItem:
    """The work item a hand-off message carries; raises KeyError or ValueError when it carries none."""
    data = message.data
    due = data.get("due_date")
    return WorkItem(account_id=message.account_id, reminder_key=message.reminder_key, attempt_id=message.attempt_id,
                    step=data["step"], due_date=date.fromisoformat(due) if due else None, queue=data["queue"],
                    priority=int(data["priority"]), kind=data["kind"], phone=data.get("phone"),
                    phone_hash=data.get("phone_hash"), borrower_hash=data.get("borrower_hash"))


class HandoffChannel:
    """Opens work items in the ledger (and pushes them to the CRM when configured)."""

    kind = ChannelKind.HANDOFF
    provider = PROVIDER

    def __init__(self, engine: Engine, clock: Callable[[], datetime], crm: CrmSettings | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.crm = crm
        self._opener = HandoffOpener(engine)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, message: Message) -> DeliveryResult:
        try:
            item = work_item(message)
        except (KeyError, ValueError) as exc:
            return DeliveryResult.permanent("not_a_handoff", f"the message carries no work item ({exc!r})")
        try:
            handoff_id, _new = await self._opener.open(item, self.clock())
        except LedgerError as exc:
            return DeliveryResult.transient("ledger", str(exc))
        if self.crm is not None:
            refused = await self._push(self.crm, handoff_id, item)
            if refused is not None:
                return refused
        return DeliveryResult.sent(provider_id(handoff_id))

    async def find_attempt(self, attempt_id: int) -> str | None:
        """The work item ``attempt_id`` opened (and, with a CRM, pushed), or ``None``: it is opened again."""
        try:
            found = await asyncio.to_thread(handoff_of_attempt, self.engine, attempt_id, pushed=self.crm is not None)
        except LedgerError as exc:
            raise DeliveryError(str(exc), code="ledger", attempt_id=attempt_id) from exc
        return None if found is None else provider_id(found)

    async def _push(self, crm: CrmSettings, handoff_id: int, item: WorkItem) -> DeliveryResult | None:
        """POST the work item; ``None`` when the CRM took it, else the failure (recorded among its events)."""
        body = json.dumps(_payload(handoff_id, item), ensure_ascii=False, sort_keys=True).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", SIGNATURE_HEADER: sign(crm.secret, body),
                   "Idempotency-Key": f"handoff-{handoff_id}"}
        try:
            async with self._http(crm).post(crm.url, data=body, headers=headers) as response:
                await response.read()
                result = _classify(response.status, response.headers.get("Retry-After"))
        except TimeoutError:
            result = DeliveryResult.transient("timeout", f"no answer from the CRM in {crm.timeout:g} s")
        except aiohttp.ClientError as exc:
            result = DeliveryResult.transient("connection", f"cannot reach the CRM: {type(exc).__name__}")
        detail = "CRM took it" if result is None else f"{result.error_code}: {result.error_message}"
        try:
            await asyncio.to_thread(record_push, self.engine, handoff_id, result is None, detail, self.clock())
        except LedgerError as exc:
            return DeliveryResult.transient("ledger", str(exc))
        return result

    def _http(self, crm: CrmSettings) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=crm.timeout))
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _classify(status: int, retry_after: str | None) -> DeliveryResult | None:
    if 200 <= status < 300:
        return None
    if status == 429 or status >= 500:
        return DeliveryResult.transient(str(status), f"the CRM answered {status}", parse_retry_after(retry_after))
    return DeliveryResult.permanent(str(status), f"the CRM refused the work item ({status})")


def _payload(handoff_id: int, item: WorkItem) -> dict[str, object]:
    """What the CRM is told: the work item, no amount and no unmasked number."""
    return {"id": handoff_id, "account_id": item.account_id, "reminder_key": item.reminder_key, "step": item.step,
            "queue": item.queue, "priority": item.priority, "kind": item.kind, "phone": item.phone,
            "due_date": item.due_date.isoformat() if item.due_date else None}
