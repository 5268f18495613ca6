"""Signed unsubscribe tokens: round trip, tampering, wrong secret, malformed input."""

from __future__ import annotations

import base64
import re

import pytest

from dispatcher.tokens import UnsubscribeClaim, sign_unsubscribe, verify_unsubscribe

SECRET = b"test-secret-key-0123456789abcdef"


def test_round_trip() -> None:
    token = sign_unsubscribe(SECRET, "email", "li.wei@example.com", "acct-1", issued_at=1_700_000_000)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}", token)  # URL-safe, unpadded, 256-bit MAC
    assert verify_unsubscribe(SECRET, token) == UnsubscribeClaim(
        "email", "li.wei@example.com", "acct-1", 1_700_000_000)


def test_non_ascii_values_round_trip() -> None:
    token = sign_unsubscribe(SECRET, "sms", "+8613800138000", "账户-7")
    claim = verify_unsubscribe(SECRET, token)
    assert claim is not None and claim.account_id == "账户-7"


def test_same_claims_at_different_times_differ() -> None:
    first = sign_unsubscribe(SECRET, "email", "a@example.com", "acct-1", issued_at=1)
    second = sign_unsubscribe(SECRET, "email", "a@example.com", "acct-1", issued_at=2)
    assert first != second


def forged_payload(token: str) -> str:
    payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    swapped = raw.replace(b"victim@example.com", b"attack@example.com")
    return base64.urlsafe_b64encode(swapped).rstrip(b"=").decode() + "." + signature


def flip_last_signature_char(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


TAMPERED = [
    pytest.param(forged_payload, id="payload-swapped"),
    pytest.param(flip_last_signature_char, id="signature-flipped"),
    pytest.param(lambda t: t.split(".")[0], id="signature-missing"),
    pytest.param(lambda t: t + "x", id="signature-extended"),
    pytest.param(lambda t: "." + t.split(".")[1], id="payload-missing"),
    pytest.param(lambda t: t.replace(".", ".."), id="extra-dot"),
    pytest.param(lambda t: "%%%." + t.split(".")[1], id="not-base64"),
    pytest.param(lambda t: "é" + t, id="non-ascii"),
    pytest.param(lambda t: "", id="empty"),
]


@pytest.mark.parametrize("tamper", TAMPERED)
def test_tampered_token_is_rejected(tamper: object) -> None:
    token = sign_unsubscribe(SECRET, "email", "victim@example.com", "acct-1")
    assert callable(tamper)
    assert verify_unsubscribe(SECRET, tamper(token)) is None


def test_wrong_secret_is_rejected() -> None:
    token = sign_unsubscribe(SECRET, "email", "a@example.com", "acct-1")
    assert verify_unsubscribe(b"another-secret", token) is None


def test_valid_signature_over_a_non_claim_payload_is_rejected() -> None:
    from dispatcher import tokens

    payload = base64.urlsafe_b64encode(b'["not", "a", "claim"]').rstrip(b"=").decode()
    signature = base64.urlsafe_b64encode(tokens._signature(SECRET, payload)).rstrip(b"=").decode()
    assert verify_unsubscribe(SECRET, f"{payload}.{signature}") is None


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        sign_unsubscribe(b"", "email", "a@example.com", "acct-1")
