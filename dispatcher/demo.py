"""The demo account table of the embedded default, filled with realistic synthetic borrowers."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, Date, Engine, MetaData, String, Table, func, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from dispatcher.errors import DispatcherError, LedgerError
from dispatcher.masking import mask_text

demo_metadata = MetaData()

demo_accounts = Table(
    "demo_accounts",
    demo_metadata,
    Column("account_id", String(64), primary_key=True),
    Column("name", String(128)),
    Column("phone", String(32)),
    Column("email", String(255)),
    Column("push_token", String(255)),
    Column("locale", String(16)),
    Column("timezone", String(64)),
    Column("currency", String(3)),
    Column("overdue_amount", String(32)),  # text, as some lenders' exports are: bad values are possible
    Column("due_date", Date),
    Column("deadline", Date),
    Column("repayment_account", String(128)),
    Column("do_not_contact", String(128)),
    Column("dispute", String(8)),
    Column("promise_to_pay_until", Date),
    Column("opt_out_channels", String(64)),
)

_ZH_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_ZH_GIVEN = ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊",
             "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超"]
_EN_FIRST = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Emily",
             "Daniel", "Sarah", "Kevin", "Grace", "Wei", "Lily"]
_EN_LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Chen", "Wang",
            "Taylor", "Moore"]
_CN_MOBILE_PREFIXES = ["138", "139", "136", "158", "186", "135", "150", "177", "188", "159"]
_US_AREAS = [
    ("212", "America/New_York"), ("312", "America/Chicago"), ("303", "America/Denver"),
    ("415", "America/Los_Angeles"), ("206", "America/Los_Angeles"), ("617", "America/New_York"),
]
_CN_ZONES = ["Asia/Shanghai", "Asia/Shanghai", "Asia/Shanghai", "Asia/Urumqi", ""]
_BAD_ROWS: list[dict[str, Any]] = [
    {"overdue_amount": "12,3O.00"},
    {"timezone": "Asia/Beijing"},
    {"phone": "+86 123"},
    {"email": "wang.at.example.com"},
]


def _zh_borrower(rng: random.Random, n: int) -> dict[str, Any]:
    phone = f"+86{rng.choice(_CN_MOBILE_PREFIXES)}{rng.randrange(10**8):08d}"
    return {
        "name": rng.choice(_ZH_SURNAMES) + rng.choice(_ZH_GIVEN),
        "phone": phone,
        "email": f"user{n}@example.cn",
        "locale": "zh-CN",
        "timezone": rng.choice(_CN_ZONES),
        "currency": "CNY",
        "overdue_amount": str(Decimal(rng.randrange(5_000, 5_000_000)) / 100),
        "repayment_account": f"6222 0212 {rng.randrange(10**4):04d} {rng.randrange(10**4):04d}",
    }


def _en_borrower(rng: random.Random, n: int) -> dict[str, Any]:
    area, zone = rng.choice(_US_AREAS)
    in_china = rng.random() < 0.2
    return {
        "name": f"{rng.choice(_EN_FIRST)} {rng.choice(_EN_LAST)}",
        "phone": f"+1{area}555{rng.randrange(100, 200):04d}" if not in_china else
                 f"+86{rng.choice(_CN_MOBILE_PREFIXES)}{rng.randrange(10**8):08d}",
        "email": f"borrower{n}@example.com",
        "locale": "en-US",
        "timezone": "Asia/Shanghai" if in_china else zone,
        "currency": "CNY" if in_china else "USD",
        "overdue_amount": str(Decimal(rng.randrange(2_000, 800_000)) / 100),
        "repayment_account": f"https://pay.xinyongqianbao.example.cn/r/{rng.randrange(16**10):010x}"
        if rng.random() < 0.5 else f"VA {rng.randrange(10**12):012d}",
    }


def _days_overdue(rng: random.Random, n: int) -> int:
    """Days overdue of demo borrower ``n``: -3 (due in three days) to 40, and 2 % from 60 to 89 (field visits)."""
    days = rng.randrange(-3, 42)
    return 60 + n % 30 if days == 41 else days


def demo_rows(count: int, today: date, seed: int = 7, bad_fraction: float = 0.002) -> Iterator[dict[str, Any]]:
    """``count`` synthetic borrowers: 80 % zh-CN, 20 % en-US, a spread of amounts and due dates (from 3 days
    ahead to 89 days ago, most within 40: every step of the shipped ladder has some)."""
    rng = random.Random(seed)
    for n in range(1, count + 1):
        row = _zh_borrower(rng, n) if rng.random() < 0.8 else _en_borrower(rng, n)
        row["account_id"] = f"L{n:08d}"
        row["due_date"] = today - timedelta(days=_days_overdue(rng, n))
        row["deadline"] = None
        row["push_token"] = f"fcm:{rng.randrange(16**24):024x}" if rng.random() < 0.7 else None
        row["do_not_contact"] = None
        row["dispute"] = None
        row["promise_to_pay_until"] = None
        row["opt_out_channels"] = None
        if rng.random() < 0.05:
            row["phone"] = None
        if rng.random() < 0.10:
            row["email"] = None
        if rng.random() < 0.05:
            row["overdue_amount"] = "0.00"
        if rng.random() < bad_fraction:
            row.update(rng.choice(_BAD_ROWS))
        yield row


def seed_demo(engine: Engine, count: int, today: date, *, replace: bool = False) -> int:
    """Create the demo table and fill it with ``count`` borrowers; returns the rows now in it.

    Raises :class:`DispatcherError` when the table already holds some of these
    account ids and :class:`LedgerError` when the database refuses the rows; neither
    message quotes a row (the database driver's own text would hold names and numbers).
    """
    try:
        _insert(engine, count, today, replace=replace)
    except IntegrityError:
        raise DispatcherError(f"demo_accounts already holds some of the first {count} demo account ids; "
                              "seed with --replace to start afresh") from None
    except SQLAlchemyError as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else type(exc).__name__  # the driver's text, no rows
        raise LedgerError(f"cannot fill demo_accounts: {mask_text(str(reason))}") from None
    return demo_count(engine)


def _insert(engine: Engine, count: int, today: date, *, replace: bool) -> None:
    demo_metadata.create_all(engine)
    with engine.begin() as connection:
        if replace:
            connection.execute(demo_accounts.delete())
        chunk: list[dict[str, Any]] = []
        for row in demo_rows(count, today):
            chunk.append(row)
            if len(chunk) == 5000:
                connection.execute(insert(demo_accounts), chunk)
                chunk = []
        if chunk:
            connection.execute(insert(demo_accounts), chunk)


def demo_count(engine: Engine) -> int:
    """Rows in the demo table (0 when the table does not exist yet)."""
    demo_metadata.create_all(engine)
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(demo_accounts)).scalar_one())
