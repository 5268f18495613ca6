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
