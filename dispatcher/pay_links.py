"""Pay links: the account's own (the ``pay_link`` column), else one built from ``payments.link`` and signed.

The signature is made with the first key of the ``DISPATCHER_SECRET_KEY`` ring
(:mod:`dispatcher.keyring`); a payment page checks a link with
:func:`pay_link_valid`, which accepts every key of the ring, so links sent before
a rotation keep working until their key is retired.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from dispatcher.accounts import Account
from dispatcher.errors import ConfigError
from dispatcher.keyring import ring, signing_key

SIGNATURE_HEX = 16
"""Hex digits of the HMAC-SHA256 kept in ``{signature}`` (64 bits: a forger has to be sent to the payment page
2^63 times on average, and the link stays short enough for an SMS)."""


def pay_link_signature(secret: bytes, account_id: str, amount: str, currency: str, due_date: str) -> str:
    """HMAC-SHA256 under the ring's signing key of the link's values, joined by ``|``: what the payment page
    recomputes."""
    return _signature(signing_key(secret), account_id, amount, currency, due_date)


def pay_link_valid(secret: bytes, signature: str, account_id: str, amount: str, currency: str,
                   due_date: str) -> bool:
    """Whether ``signature`` is a link's under any key of the ring ``secret`` (compared in constant time)."""
    given = signature.strip().lower().encode()
    return any([hmac.compare_digest(_signature(key, account_id, amount, currency, due_date).encode(), given)
                for key in ring(secret)])


def _signature(key: bytes, account_id: str, amount: str, currency: str, due_date: str) -> str:
    message = "|".join((account_id, amount, currency, due_date)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:SIGNATURE_HEX]


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
