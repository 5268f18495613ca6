"""A delivery job survives the trip through the broker: every field, every type."""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from decimal import Decimal

from dispatcher.accounts import Account
from dispatcher.channels.base import ChannelKind
from dispatcher.jobs import DeliveryJob


def full_job() -> DeliveryJob:
    """A job whose every field differs from its default."""
    account = Account(
        account_id="A-1", name="王伟", phone="+8613800138000", email="wang@example.com", push_token="tok",
        locale="zh-CN", timezone="Asia/Shanghai", currency="CNY", overdue_amount=Decimal("1234.50"),
        due_date=date(2026, 11, 1), deadline=date(2026, 12, 1), repayment_account="6222 0212 3456 7890",
        do_not_contact="sms", dispute=True, promise_to_pay_until=date(2026, 12, 5),
        opt_out_channels=frozenset({"email", "push"}), pause_flags=frozenset({"attorney"}))
    return DeliveryJob(attempt_id=7, try_no=2, reminder_key="A-1:gentle:2026-11-01", account=account,
                       step="gentle", occurrence=3, days_overdue=27, local_today=date(2026, 11, 28),
                       channel=ChannelKind.EMAIL, address="wang@example.com",
                       fallbacks=(ChannelKind.SMS, ChannelKind.PUSH), parent_id=5, run_id=9)


def test_a_job_round_trips_through_json() -> None:
    job = full_job()
    assert DeliveryJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_to_dict_names_every_field_of_the_job_and_the_account() -> None:
    data = full_job().to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(DeliveryJob)}
    assert set(data["account"]) == {f.name for f in dataclasses.fields(Account)}
