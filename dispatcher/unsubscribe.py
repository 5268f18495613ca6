"""Unsubscribe links of reminder emails: a signed one-click https link and a mailto (RFC 8058)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from urllib.parse import quote

from dispatcher.channels.base import ChannelKind
from dispatcher.jobs import DeliveryJob
from dispatcher.tokens import sign_unsubscribe

UNSUBSCRIBE_PATH = "/unsubscribe/"
"""Where ``dispatcher web`` serves one-click unsubscribes, below ``DISPATCHER_PUBLIC_URL``."""


@dataclass(frozen=True)
class UnsubscribeLinks:
    """Builds each email's unsubscribe URL and headers; without a public URL only the mailto remains."""

    public_url: str | None
    secret: bytes = field(repr=False)
    mailbox: str | None

    def __call__(self, job: DeliveryJob) -> tuple[str | None, Mapping[str, str]]:
        if job.channel is not ChannelKind.EMAIL:
            return None, {}
        token = sign_unsubscribe(self.secret, job.channel.value, job.address, job.account.account_id) \
            if self.secret else None
        url = f"{self.public_url}{UNSUBSCRIBE_PATH}{token}" if self.public_url and token else None
        targets = []
        if url:
            targets.append(f"<{url}>")
        if self.mailbox:
            subject = quote(f"unsubscribe {token}" if token else "unsubscribe")
            targets.append(f"<mailto:{self.mailbox}?subject={subject}>")
        headers: dict[str, str] = {}
        if targets:
            headers["List-Unsubscribe"] = ", ".join(targets)
        if url:
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return url, headers


def unsubscribe_mailbox(email_from: str, override: str | None) -> str | None:
    """The mailto address: ``DISPATCHER_UNSUBSCRIBE_EMAIL``, else the sender's address."""
    address = override or parseaddr(email_from)[1]
    return address or None
