"""Pay links: the account's own (the ``pay_link`` column), else one built from ``payments.link`` and signed."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from dispatcher.accounts import Account
from dispatcher.errors import ConfigError

SIGNATURE_HEX = 16
"""Hex digits of the HMAC-SHA256 kept in ``{signature}`` (64 bits: a forger has to be sent to the payment page
2^63 times on average, and the link stays short enough for an SMS)."""


def pay_link_signature(secret: bytes, account_id: str, amount: str, currency: str, due_date: str) -> str:
    """HMAC-SHA256 under ``secret`` of the link's values, joined by ``|``: what the payment page recomputes."""
    message = "|".join((account_id, amount, currency, due_date)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:SIGNATURE_HEX]


class PayLinks:
    """Builds each account's pay link; ``template`` is ``payments.link`` of schedules.yaml (or ``None``)."""

    def __init__(self, template: str | None, secret: bytes) -> None:
        if template is not None and not secret:
            raise ConfigError("DISPATCHER_SECRET_KEY must be set when schedules.yaml has payments.link "
                              "(it signs the pay links)")
        self.template = template
        self.secret = secret

    def link(self, account: Account) -> str | None:
        if account.pay_link:
            return account.pay_link
        if self.template is None:
            return None
        values = {"account_id": account.account_id, "amount": str(account.overdue_amount),
                  "currency": account.currency, "due_date": account.due_date.isoformat()}
        signature = pay_link_signature(self.secret, **values)
        return self.template.format(signature=signature, **{k: quote(v, safe="") for k, v in values.items()})
