"""Masking personal data: addresses in the ledger and listings, phone numbers and emails in every log line."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from dispatcher.logs import configure_logging
from dispatcher.masking import MaskingFilter, mask_address, mask_email, mask_phone, mask_text, mask_token


@pytest.mark.parametrize(
    ("phone", "masked"),
    [("+8613812348000", "+86138****8000"), ("+12125550123", "+121****0123"), ("+447911123456", "+4479****3456"),
     ("+4479111234", "+44****1234"), ("+1234567", "********")],
)
def test_mask_phone(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked
    assert len(masked) == len(phone)


@pytest.mark.parametrize(
    ("address", "masked"),
    [("zhang.wei@example.com", "z***@example.com"), ("a@b.cn", "a***@b.cn"), ("not-an-email", "***")],
)
def test_mask_email(address: str, masked: str) -> None:
    assert mask_email(address) == masked


def test_mask_token_and_address() -> None:
    assert mask_token("fcm:0123456789abcdef") == "…abcdef"
    assert mask_token("short") == "***"
    assert mask_address("sms", "+8613812348000") == "+86138****8000"
    assert mask_address("email", "zhang.wei@example.com") == "z***@example.com"
    assert mask_address("push", "fcm:0123456789abcdef") == "…abcdef"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("sms to +8613812348000 failed", "sms to +86138****8000 failed"),
        ("to=+12125550123, cc=zhang.wei@example.com.", "to=+121****0123, cc=z***@example.com."),
        ("tel:+447911123456;", "tel:+4479****3456;"),
        ("two: +8613812348000 +8613912340001", "two: +86138****8000 +86139****0001"),
        ("account L00000001 owes 1234.56 CNY", "account L00000001 owes 1234.56 CNY"),
        ("no data here", "no data here"),
    ],
)
def test_mask_text(text: str, masked: str) -> None:
    assert mask_text(text) == masked


@pytest.mark.parametrize("written", ["+86 138 1234 8000", "+86-138-1234-8000", "+1 (212) 555-0123"])
def test_mask_text_masks_phone_numbers_written_with_separators(written: str) -> None:
    """Regression: only compact E.164 numbers were masked."""
    masked = mask_text(f"call {written} now")
    assert written not in masked
    assert masked.startswith("call +") and masked.endswith(" now") and "****" in masked


FCM_TOKEN = "cQ3mXbS1TfiyX0hV2zL9aA:APA91bH" + "x7Kq2Lm9Np4Rs8Tv1Wy5Zb3Cd6Ef0Gh_Jk-Mn" * 4
"""A registration token shaped like FCM's: instance id, colon, APA91b and ~150 token characters."""
UNSUBSCRIBE_TOKEN = "eyJjIjoiZW1haWwiLCJhIjoidXNlcjFAZXhhbXBsZS5jbiJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # numbers with or without "+", URL-encoded, spaced, dashed, bracketed, 00-prefixed
        ("The 'To' number +8613800138007 is not a valid phone number.",
         "The 'To' number +86138****8007 is not a valid phone number."),
        ("To=%2B8613800138007&From=%2B14155550999", "To=%2B86138****8007&From=%2B141****0999"),
        ("To=%2b86%20138%200013%208007", "To=%2b86138****8007"),
        ("from 8613800138007 (no plus)", "from 86138****8007 (no plus)"),
        ("national 13800138007.", "national 138****8007."),
        ("spaced 138 0013 8007, dashed 138-0013-8007", "spaced 138****8007, dashed 138****8007"),
        ("00-prefixed 008613800138007 and 0086 138 0013 8007", "00-prefixed 00861****8007 and 00861****8007"),
        ("us 12125550123 or (212) 555-0123", "us 121****0123 or 21****0123"),
        ("q=%3A8613800138007", "q=%3A86138****8007"),
        # emails, "@" also URL-encoded; a number as the local part
        ("<user1@example.cn>: Recipient address rejected", "<u***@example.cn>: Recipient address rejected"),
        ("to=user1%40example.cn&x=1", "to=u***%40example.cn&x=1"),
        ("13800138007@qq.com", "1***@qq.com"),
        ("a.b-c+tag@mail.example.co.uk", "a***@mail.example.co.uk"),
        # push tokens: FCM-shaped, "fcm:"-prefixed; unsubscribe tokens and JWTs
        (f"The registration token {FCM_TOKEN} is not valid", "The registration token …_Jk-Mn is not valid"),
        ("token fcm:6b4cb2424a23d5962217bead unregistered", "token …17bead unregistered"),
        (f"GET /unsubscribe/{UNSUBSCRIBE_TOKEN} HTTP/1.1", "GET /unsubscribe/*** HTTP/1.1"),
        (f"claim {UNSUBSCRIBE_TOKEN} refused", "claim *** refused"),
    ],
)
def test_mask_text_masks_personal_data_in_every_spelling(text: str, masked: str) -> None:
    assert mask_text(text) == masked
    assert mask_text(masked) == masked  # masking twice changes nothing


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-10 10:00:00,123 INFO    dispatcher.pipeline.run: run morning (#12) completed: sent=15000 failed=0",
        "2026-03-10T02:00:00+00:00 .. 2026-03-10T10:00:00+08:00, 20260310, 2026-03-10 2026-03-11",
        "owes 1234.56 CNY, 1,234,567.89 USD, 0.12345678901234, 12345678901.5",
        "account L00000001 attempt 123456 run 77 pid 4242 duration_ms 1234",
        "reminder L00000001|2026-03-05|gentle|0 try 1",
        "sid SM0123456789abcdef0123456789abcdef, content a1b2c3d4e5f6, hash " + "0123456789abcdef" * 4,
        "celery task 550e8400-e29b-41d4-a716-446655440000, 123e4567-e89b-12d3-a456-426614174000",
        "lender account 6222 0212 3456 7890 (16 digits)",
        "+08:00 +0800 #1234567 v1.2.3 192.168.100.200 ::1 http://127.0.0.1:8080/healthz",
        "route /unsubscribe/{token} and a rule " + "-" * 120,
        "already masked: +86138****8007, 138****8007, u***@example.cn, …17bead",
    ],
)
def test_mask_text_leaves_dates_amounts_ids_and_hashes_alone(text: str) -> None:
    assert mask_text(text) == text


@pytest.fixture
def masked_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.masking")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def test_log_records_pass_the_filter_masked(masked_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = masked_log
    logger.info("sms to %s and email to %s: %d sent", "+8613812348000", "zhang.wei@example.com", 2)
    logger.warning("nothing personal: %s", "L00000001")
    assert stream.getvalue().splitlines() == [
        "INFO sms to +86138****8000 and email to z***@example.com: 2 sent",
        "WARNING nothing personal: L00000001",
    ]


def test_the_filter_rewrites_the_record_once() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "to %s", ("+8613812348000",), None)
    assert MaskingFilter().filter(record) is True
    assert (record.getMessage(), record.args) == ("to +86138****8000", None)
    untouched = logging.LogRecord("x", logging.INFO, __file__, 1, "%d%%", (5,), None)
    assert MaskingFilter().filter(untouched) is True
    assert (untouched.msg, untouched.args) == ("%d%%", (5,))


@pytest.fixture
def restored_root() -> Iterator[None]:
    """Put the root logger back after a test that calls ``configure_logging``."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restored_root")
def test_configured_logging_masks_messages_and_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: MaskingFilter masked the message only; log.exception()'s traceback went out unmasked."""
    configure_logging("INFO")  # here, not in a fixture: the handler binds the sys.stderr of the test's call phase
    log = logging.getLogger("dispatcher.tests.masking")
    log.info("sms to %s", "+8613812348000")
    try:
        raise ValueError("provider refused +8613812348000 / zhang.wei@example.com")
    except ValueError:
        log.exception("send to %s failed", "zhang.wei@example.com")
    err = capsys.readouterr().err
    assert "+8613812348000" not in err and "zhang.wei@example.com" not in err
    assert "ValueError: provider refused +86138****8000 / z***@example.com" in err
    assert "Traceback" in err
