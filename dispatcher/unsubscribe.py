"""Unsubscribe links of reminder emails: a signed one-click https link (RFC 8058), nothing else.

No ``mailto:`` target is advertised: nothing reads such a mailbox, so an
unsubscribe sent there would be lost. Without ``DISPATCHER_PUBLIC_URL`` (or the
secret that signs the links) an email carries no ``List-Unsubscribe`` header.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dispatcher.channel_kind import ChannelKind
from dispatcher.pipeline.jobs import DeliveryJob
from dispatcher.tokens import sign_unsubscribe

UNSUBSCRIBE_PATH = "/unsubscribe/"
"""Where ``dispatcher web`` serves one-click unsubscribes, below ``DISPATCHER_PUBLIC_URL``."""


@dataclass(frozen=True)
class UnsubscribeLinks:
    """Builds each email's one-click unsubscribe URL and its ``List-Unsubscribe`` headers."""

    public_url: str | None
    secret: bytes = field(repr=False)

    def __call__(self, job: DeliveryJob) -> tuple[str | None, Mapping[str, str]]:
        """The URL and headers for ``job``; ``(None, {})`` for other channels or without a public URL."""
        if job.channel is not ChannelKind.EMAIL or not self.public_url or not self.secret:
            return None, {}
        token = sign_unsubscribe(self.secret, job.channel.value, job.address, job.account.account_id)
        url = f"{self.public_url}{UNSUBSCRIBE_PATH}{token}"
        return url, {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
