"""``@record``: value types that compare, hash and change like frozen dataclasses, and that the type checker keeps
immutable."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import DeliveryResult, Message
from dispatcher.pipeline.history import Contact

ROOT = Path(__file__).resolve().parent.parent


def _message(**changes: object) -> Message:
    return dataclasses.replace(Message(1, "k", "A1", ChannelKind.SMS, "+8613812348000", "hello"), **changes)


def test_a_record_compares_hashes_and_changes_by_its_fields() -> None:
    at = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
    contact, same = Contact(7, "A1", "sms", "h1", at, "b1"), Contact(7, "A1", "sms", "h1", at, "b1")
    assert contact == same and hash(contact) == hash(same) and len({contact, same}) == 1
    assert dataclasses.replace(contact, attempt_id=8) != contact and contact.attempt_id == 7
    assert _message(body="other").body == "other" and _message() == _message()
    assert not hasattr(contact, "__dict__")  # slotted: no attribute can be added by mistake
    assert pickle.loads(pickle.dumps(_message())) == _message()


def test_a_record_runs_its_checks_when_built() -> None:
    result = DeliveryResult.transient("21211", "The 'To' number +8613812348000 is not a valid phone number")
    assert "+8613812348000" not in (result.error_message or "")


def test_the_type_checker_refuses_a_change_to_a_records_field(tmp_path: Path) -> None:
    snippet = tmp_path / "change.py"
    snippet.write_text(
        "from dispatcher.channel_kind import ChannelKind\n"
        "from dispatcher.channels.base import Message\n"
        "message = Message(1, 'k', 'A1', ChannelKind.SMS, '+8613812348000', 'hello')\n"
        "message.body = 'changed'\n",
        encoding="utf-8",
    )
    checked = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
                             cwd=ROOT, capture_output=True, text=True, check=False)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert 'change.py:4: error: Property "body" defined in "Message" is read-only' in checked.stdout
