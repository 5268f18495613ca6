"""The outbox channel as a provider that can be asked, with writes that a kill -9 cannot tear.

Real files and real processes: the SIGKILL test runs this module as the writer
(``python tests/test_outbox.py DIRECTORY FIRST_ATTEMPT``), so writer and checker
build the same messages.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import AttemptLookup, DeliveryResult, Message, Outcome
from dispatcher.channels.headers import UNSAFE_HEADER
from dispatcher.channels.outbox import OutboxChannel
from dispatcher.errors import DeliveryError

KILL_ROUNDS = 3
"""Writer processes killed one after the other on the same outbox."""

TEMPORARY_EML = re.compile(r"\.\d{8}-[\w-]+\.eml\.\d+-\d+\.tmp")
"""A temporary file the email writer left behind when killed."""


def text_of(attempt_id: int) -> str:
    return f"提醒 {attempt_id}: 您的借款已逾期，请尽快还款。Reminder {attempt_id}. " * 4


def html_of(attempt_id: int) -> str:
    """Large enough (about 200 kB) that a kill often lands while an email is being written."""
    return f"<p>reminder {attempt_id}</p>\n" * 8000


def message(kind: ChannelKind, attempt_id: int, *, big: bool = False) -> Message:
    return Message(
        attempt_id=attempt_id, reminder_key=f"L{attempt_id}|2026-03-01|d1|1", account_id=f"L{attempt_id:08d}",
        channel=kind, to="borrower@example.com" if kind is ChannelKind.EMAIL else "+8613800138000",
        body=text_of(attempt_id), subject=f"Reminder {attempt_id}", html=html_of(attempt_id) if big else "<p>hi</p>",
        title="Reminder", data={"attempt": str(attempt_id)})


def ask(channel: OutboxChannel, attempt_id: int) -> str | None:
    return asyncio.run(channel.find_attempt(attempt_id))


def send(channel: OutboxChannel, *attempt_ids: int) -> None:
    async def run() -> None:
        for attempt_id in attempt_ids:
            result = await channel.send(message(channel.kind, attempt_id))
            assert result.outcome is Outcome.SENT, result
        await channel.aclose()

    asyncio.run(run())


def jsonl(directory: Path, kind: ChannelKind) -> bytes:
    return (directory / f"{kind.value}.jsonl").read_bytes()


@pytest.mark.parametrize("kind", list(ChannelKind))
def test_find_attempt_answers_for_written_and_unwritten_attempts(tmp_path: Path, kind: ChannelKind) -> None:
    channel = OutboxChannel(kind, tmp_path)
    assert isinstance(channel, AttemptLookup)
    assert ask(channel, 7) is None  # nothing written yet: no file at all

    send(channel, 7, 123_456_789)

    assert ask(channel, 7) == f"outbox-{kind.value}-7"
    assert ask(channel, 123_456_789) == f"outbox-{kind.value}-123456789"
    assert ask(channel, 8) is None
    assert ask(channel, 70) is None  # the email prefix is the whole zero-padded id and its dash
    fresh = OutboxChannel(kind, tmp_path)  # another process asking
    assert [ask(fresh, n) for n in (7, 8)] == [f"outbox-{kind.value}-7", None]


@pytest.mark.parametrize("kind", [ChannelKind.SMS, ChannelKind.PUSH])
def test_find_attempt_sees_records_appended_after_it_first_read_the_file(tmp_path: Path, kind: ChannelKind) -> None:
    asking = OutboxChannel(kind, tmp_path)
    send(OutboxChannel(kind, tmp_path), 1, 2)
    assert [ask(asking, n) for n in (1, 2, 3)] == [f"outbox-{kind.value}-1", f"outbox-{kind.value}-2", None]

    send(OutboxChannel(kind, tmp_path), 3)

    assert ask(asking, 3) == f"outbox-{kind.value}-3"
    assert ask(asking, 1) == f"outbox-{kind.value}-1"


def test_find_attempt_reads_a_replaced_file_again(tmp_path: Path) -> None:
    asking = OutboxChannel(ChannelKind.SMS, tmp_path)
    send(OutboxChannel(ChannelKind.SMS, tmp_path), 1, 2, 3)
    assert ask(asking, 1) == "outbox-sms-1"

    (tmp_path / "sms.jsonl").rename(tmp_path / "sms.jsonl.1")  # rotated
    send(OutboxChannel(ChannelKind.SMS, tmp_path), 4)

    assert [ask(asking, n) for n in (1, 4)] == [None, "outbox-sms-4"]


def test_a_torn_tail_line_is_ended_and_skipped(tmp_path: Path) -> None:
    send(OutboxChannel(ChannelKind.SMS, tmp_path), 1)
    with (tmp_path / "sms.jsonl").open("ab") as file:
        file.write(b'{"attempt_id": 2, "reminder": "L2|2026-03-01|d1|1", "text": "\xe6\x8f')  # torn in a character
    asking = OutboxChannel(ChannelKind.SMS, tmp_path)
    assert [ask(asking, n) for n in (1, 2)] == ["outbox-sms-1", None]

    send(OutboxChannel(ChannelKind.SMS, tmp_path), 3, 4)

    lines = jsonl(tmp_path, ChannelKind.SMS).split(b"\n")
    assert len(lines) == 5 and lines[-1] == b""
    assert lines[1].startswith(b'{"attempt_id": 2,')
    assert [json.loads(lines[n])["attempt_id"] for n in (0, 2, 3)] == [1, 3, 4]
    assert [ask(asking, n) for n in (1, 2, 3, 4)] == ["outbox-sms-1", None, "outbox-sms-3", "outbox-sms-4"]
    assert ask(OutboxChannel(ChannelKind.SMS, tmp_path), 2) is None


def test_a_line_another_writer_is_still_writing_is_not_taken_for_torn(tmp_path: Path) -> None:
    # another process's line crossing a page boundary: its first page is in the file before its end is
    other = os.open(tmp_path / "sms.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    line = json.dumps({"attempt_id": 1, "text": "x" * 5000}).encode("utf-8") + b"\n"
    os.write(other, line[:4096])
    rest = threading.Timer(0.005, os.write, (other, line[4096:]))
    rest.start()
    try:
        send(OutboxChannel(ChannelKind.SMS, tmp_path), 2)
    finally:
        rest.join()
        os.close(other)

    lines = jsonl(tmp_path, ChannelKind.SMS).split(b"\n")
    assert [json.loads(found)["attempt_id"] for found in lines[:-1]] == [1, 2]  # no empty line between them


def test_a_file_ending_with_a_newline_gets_no_empty_line(tmp_path: Path) -> None:
    send(OutboxChannel(ChannelKind.PUSH, tmp_path), 1)
    send(OutboxChannel(ChannelKind.PUSH, tmp_path), 2)

    records = [json.loads(line) for line in jsonl(tmp_path, ChannelKind.PUSH).decode("utf-8").splitlines()]

    assert [(r["attempt_id"], r["title"], r["data"]) for r in records] == [
        (1, "Reminder", {"attempt": "1"}), (2, "Reminder", {"attempt": "2"})]


def test_an_email_is_found_only_once_renamed_into_place(tmp_path: Path) -> None:
    channel = OutboxChannel(ChannelKind.EMAIL, tmp_path)
    send(channel, 5)
    (written,) = (tmp_path / "email").iterdir()
    assert written.name == "00000005-L00000005.eml"
    parsed = parse_eml(written.read_bytes())
    assert parsed["Subject"] == "Reminder 5"
    (tmp_path / "email" / ".00000006-L00000006.eml.123-456.tmp").write_bytes(written.read_bytes()[:100])

    assert ask(OutboxChannel(ChannelKind.EMAIL, tmp_path), 5) == "outbox-email-5"
    assert ask(OutboxChannel(ChannelKind.EMAIL, tmp_path), 6) is None


@pytest.mark.parametrize(
    "evil",
    [{"subject": "Dear Li Wei\r\nBcc: x@evil.example"}, {"subject": "Dear Li\nBcc: x@evil.example"},
     {"subject": "尊敬的王伟\r\nBcc: x@evil.example"}, {"to": "b@example.com\r\nBcc: x@evil.example"},
     {"headers": {"List-Unsubscribe": "<https://u.example/t>\rBcc: x@evil.example"}}],
    ids=["crlf-subject", "lf-subject", "crlf-non-ascii-subject", "crlf-to", "cr-extra-header"],
)
def test_a_line_break_in_a_header_refuses_the_email(tmp_path: Path, evil: dict[str, object]) -> None:
    """Regression: a CR/LF in a borrower's name injected headers into the outbox .eml files."""
    message_ = replace(message(ChannelKind.EMAIL, 9), **evil)  # type: ignore[arg-type]
    channel = OutboxChannel(ChannelKind.EMAIL, tmp_path)

    async def run() -> DeliveryResult:
        try:
            return await channel.send(message_)
        finally:
            await channel.aclose()

    result = asyncio.run(run())
    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, UNSAFE_HEADER)
    assert list((tmp_path / "email").glob("*.eml")) == []
    assert ask(OutboxChannel(ChannelKind.EMAIL, tmp_path), 9) is None


def test_a_long_non_ascii_subject_is_folded_with_crlf(tmp_path: Path) -> None:
    subject = "还款提醒：" + "您的借款已逾期，请尽快还款。" * 6
    channel = OutboxChannel(ChannelKind.EMAIL, tmp_path)

    async def run() -> None:
        assert (await channel.send(replace(message(ChannelKind.EMAIL, 3), subject=subject))).outcome is Outcome.SENT
        await channel.aclose()

    asyncio.run(run())
    (written,) = (tmp_path / "email").glob("*.eml")
    data = written.read_bytes()
    assert b"\n" not in data.replace(b"\r\n", b"")  # every line ends with CRLF, folded headers too
    assert parse_eml(data)["Subject"] == subject


@pytest.mark.parametrize("kind", list(ChannelKind))
def test_an_unreadable_outbox_raises_delivery_error(tmp_path: Path, kind: ChannelKind) -> None:
    if kind is ChannelKind.EMAIL:
        (tmp_path / "email").write_text("a file where the folder should be", encoding="utf-8")
    else:
        (tmp_path / f"{kind.value}.jsonl").mkdir()

    with pytest.raises(DeliveryError) as raised:
        ask(OutboxChannel(kind, tmp_path), 1)

    assert raised.value.code == "outbox_io" and raised.value.attempt_id == 1


def test_a_writer_killed_with_sigkill_leaves_only_whole_lines_and_whole_emails(tmp_path: Path) -> None:
    for round_no in range(KILL_ROUNDS):
        kill_while_writing(tmp_path, first_attempt=round_no * 1_000_000)

    emails = check_emails(tmp_path / "email")
    lines = {kind: check_lines(tmp_path, kind) for kind in (ChannelKind.SMS, ChannelKind.PUSH)}
    assert len(emails) > KILL_ROUNDS and all(len(found) > KILL_ROUNDS for found in lines.values())
    for kind, found in [(ChannelKind.EMAIL, emails), *lines.items()]:
        asking = OutboxChannel(kind, tmp_path)
        assert all(ask(asking, n) == f"outbox-{kind.value}-{n}" for n in (min(found), max(found)))
        assert ask(asking, max(found) + 1_000_000) is None


def kill_while_writing(directory: Path, first_attempt: int) -> None:
    """Start a writer on ``directory``, let it write a few emails, kill it with SIGKILL at a random moment."""
    before = count_emails(directory / "email")
    writer = subprocess.Popen([sys.executable, __file__, str(directory), str(first_attempt)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while count_emails(directory / "email") < before + 3:
            assert writer.poll() is None, writer.communicate()[1]
            assert time.monotonic() < deadline, "the writer wrote no email within 60 s"
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.05))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL


def count_emails(folder: Path) -> int:
    return sum(name.endswith(".eml") for name in os.listdir(folder)) if folder.is_dir() else 0


def check_emails(folder: Path) -> list[int]:
    """Every ``.eml`` parses whole with its expected text and HTML; anything else is a temporary file."""
    found = []
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(".eml"):
            assert TEMPORARY_EML.fullmatch(path.name), path.name
            continue
        attempt_id = int(path.name.split("-", 1)[0])
        parsed = parse_eml(path.read_bytes())
        text, html = parsed.iter_parts()
        assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
        contents = (text.get_content(), html.get_content())  # text travels in canonical CRLF form
        assert tuple(c.replace("\r\n", "\n") for c in contents) == (text_of(attempt_id), html_of(attempt_id)), \
            path.name
        found.append(attempt_id)
    return found


def parse_eml(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed.is_multipart() and not parsed.defects
    assert all(not part.defects for part in parsed.walk())
    assert data.endswith(b"--\r\n")  # the closing boundary
    return parsed


def check_lines(directory: Path, kind: ChannelKind) -> list[int]:
    """Every line of the kind's JSONL is a whole record with its expected text, and the file ends with one."""
    content = jsonl(directory, kind)
    assert content.endswith(b"\n")
    records = [json.loads(line) for line in content.decode("utf-8").splitlines()]
    assert all(record["text"] == text_of(record["attempt_id"]) for record in records)
    return [record["attempt_id"] for record in records]


async def write_forever(directory: Path, first_attempt: int) -> None:
    """The killed writer: batches of SMS, push and big emails written at once, as a delivery batch does."""
    channels = [OutboxChannel(kind, directory) for kind in ChannelKind]
    for batch_start in range(first_attempt + 1, first_attempt + 1_000_000, 8):
        await asyncio.gather(*(channel.send(message(channel.kind, attempt_id, big=True))
                               for attempt_id in range(batch_start, batch_start + 8) for channel in channels))


if __name__ == "__main__":
    asyncio.run(write_forever(Path(sys.argv[1]), int(sys.argv[2])))
