"""Signed unsubscribe tokens for one-click links (RFC 8058).

A token is ``<payload>.<signature>``, both unpadded URL-safe base64. The payload
is compact JSON naming the channel, the address and the account; the signature
is HMAC-SHA256 over the encoded payload under ``DISPATCHER_SECRET_KEY``, so a
token cannot be forged or altered without the key. Tokens are signed, not
encrypted: the address they carry is readable by whoever holds the link, which
is the recipient it was sent to.

The secret is a key ring (:mod:`dispatcher.keyring`): new tokens are signed
with its first key and a token signed with any listed key is accepted, so a
rotation breaks no link already sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from dispatcher.keyring import ring, signing_key

_CONTEXT = b"dispatcher/unsubscribe/v1\x00"
"""Domain separation: the same key may sign other kinds of token later."""


@dataclass(frozen=True, slots=True)
class UnsubscribeClaim:
    """What a valid unsubscribe token asserts: stop ``channel`` to ``address`` for ``account_id``."""

    channel: str
    address: str
    account_id: str
    issued_at: int


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, payload: str) -> bytes:
    if not secret:
        raise ValueError("the unsubscribe secret must not be empty")
    return hmac.new(secret, _CONTEXT + payload.encode("ascii"), hashlib.sha256).digest()


def sign_unsubscribe(
    secret: bytes, channel: str, address: str, account_id: str, *, issued_at: int | None = None
) -> str:
    """Return a URL-safe token that :func:`verify_unsubscribe` accepts under the same secret.

    Raises ``ValueError`` for an empty secret.
    """
    issued = int(time.time()) if issued_at is None else issued_at
    claims = {"c": channel, "a": address, "i": account_id, "t": issued}
    payload = _b64encode(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    key = signing_key(secret) if secret else secret
    return f"{payload}.{_b64encode(_signature(key, payload))}"


def verify_unsubscribe(secret: bytes, token: str) -> UnsubscribeClaim | None:
    """Return the claim of a token signed by a key of the ring ``secret``, ``None`` for a malformed, altered
    or foreign one.

    The signature is compared in constant time with each key's. Raises ``ValueError`` for an empty secret.
    """
    keys = ring(secret) or (secret,)
    payload, dot, signature = token.strip().partition(".")
    if not dot or not payload.isascii() or not signature.isascii():
        return None
    # compare the canonical text, not the decoded bytes: base64's last character carries
    # padding bits, and two spellings of one signature must not both be accepted
    given = signature.encode("ascii")
    if not any([hmac.compare_digest(_b64encode(_signature(key, payload)).encode("ascii"), given) for key in keys]):
        return None
    return _claim(payload)


def _claim(payload: str) -> UnsubscribeClaim | None:
    try:
        claims = json.loads(_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    channel, address, account_id, issued = (claims.get(k) for k in ("c", "a", "i", "t"))
    if not (isinstance(channel, str) and isinstance(address, str) and isinstance(account_id, str)):
        return None
    if not isinstance(issued, int):
        return None
    return UnsubscribeClaim(channel, address, account_id, issued)
