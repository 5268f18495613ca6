"""Tests that kill mutants of the reply decisions, the ledger's claim and finish code and the Twilio webhooks.

Each test here guards a promise a surviving mutant of ``scripts/mutate.py`` showed
unguarded (who is contacted, when, how often). The reply table of
``tests/test_optout_words.py`` is run again here under plain ids: mutmut cannot
select its tests again by their ids (they hold backslashes).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select
from test_optout_words import CASES

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.ledger import claims
from dispatcher.ledger.claims import AttemptOutcome, GiveBack
from dispatcher.ledger.database import create_ledger_engine, upgrade
from dispatcher.ledger.replies import OPT_OUT_SOURCES, InboundReply, record_reply
from dispatcher.ledger.store import Ledger
from dispatcher.ledger.suppressions import lift_hash, suppress_hash
from dispatcher.ledger.tables import attempts, suppressions
from dispatcher.masking import address_hash, mask_phone
from dispatcher.pipeline.history import BatchHistory, Contact
from dispatcher.replies.words import Decision, Vocabulary, normalise, recognise
from dispatcher.rules import content
from dispatcher.rules.call_cap import CALL_LIMITS, CallCapRule


@pytest.mark.parametrize(("reply", "decision", "keyword"), CASES, ids=[f"case{n}" for n in range(len(CASES))])
def test_every_reply_of_the_table_is_read_as_listed(reply: str, decision: Decision, keyword: str | None) -> None:
    found = recognise(reply)
    assert (found.decision, found.keyword) == (decision, keyword)
    # the same with the shipped phrases built now: the default vocabulary was built at import, before a mutant
    # of the code that builds it (and normalises its phrases) is switched on
    again = recognise(reply, Vocabulary.build())
    assert (again.decision, again.keyword) == (decision, keyword)


# the ledger: a claim given back ---------------------------------------------------------------------------------

NOW = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)


@pytest.fixture
def engine(ledger_url: str) -> Iterator[Engine]:
    built = create_ledger_engine(ledger_url)
    upgrade(built)
    yield built
    built.dispose()


def add_attempts(engine: Engine, *statuses: str) -> list[int]:
    """One attempt row per status (each its own reminder, with a send time from an earlier life); their ids."""
    base = {"account_id": "A", "step": "gentle", "occurrence": 0, "channel": "sms", "try_no": 1,
            "template": "gentle", "created_at": NOW, "updated_at": NOW, "attempted_at": NOW - timedelta(days=1)}
    with engine.begin() as connection:
        for n, status in enumerate(statuses):
            connection.execute(insert(attempts).values(**base, reminder_key=f"K{n}", status=status))
        return [r.id for r in connection.execute(select(attempts.c.id).order_by(attempts.c.id))]


def attempt_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(select(attempts).order_by(attempts.c.id)).mappings()]


def test_a_claim_given_back_is_planned_again_and_only_that_one(engine: Engine) -> None:
    """A claim that never reached a channel goes back to ``planned`` (the next run sends it); nothing else moves."""
    given, other_claim, sending = add_attempts(engine, "planned", "planned", "planned")
    later = NOW + timedelta(minutes=1)
    assert Ledger(engine).start_sending([sending], NOW) == {sending}
    with engine.begin() as connection:
        assert claims.claim(connection, [given, other_claim], NOW) == {given, other_claim}
        claims.give_back(connection, [GiveBack(given), GiveBack(sending)], later)

    rows = {r["id"]: r for r in attempt_rows(engine)}
    assert (rows[given]["status"], rows[given]["attempted_at"], rows[given]["updated_at"]) == ("planned", None, later)
    assert rows[other_claim]["status"] == "claimed"  # not given back: still owned by its deliverer
    assert (rows[sending]["status"], rows[sending]["attempted_at"]) == ("sending", NOW)  # handed over: in doubt


def test_a_held_claim_given_back_keeps_its_reason_and_only_that_one(engine: Engine) -> None:
    """A claim held back (a template that fails) is planned again with why; other claims keep theirs."""
    held, plain, other = add_attempts(engine, "planned", "planned", "planned")
    later = NOW + timedelta(minutes=1)
    with engine.begin() as connection:
        claims.claim(connection, [held, plain, other], NOW)
        claims.give_back(connection, [GiveBack(held, error_code="template", error_class="permanent",
                                               error_message="render failed", rule_id="content"),
                                      GiveBack(plain)], later)

    rows = {r["id"]: r for r in attempt_rows(engine)}
    fields = ("status", "attempted_at", "updated_at", "error_code", "error_class", "error_message", "rule_id")
    assert tuple(rows[held][f] for f in fields) == (
        "planned", None, later, "template", "permanent", "render failed", "content")
    assert tuple(rows[plain][f] for f in fields) == ("planned", None, later, None, None, None, None)
    assert (rows[other]["status"], rows[other]["error_code"]) == ("claimed", None)


def test_a_held_claim_without_a_rule_is_given_back_and_a_handed_over_one_is_not(engine: Engine) -> None:
    """A hold with only an error is planned again; a hold of a try already handed over leaves it in doubt."""
    held, sending = add_attempts(engine, "planned", "planned")
    Ledger(engine).start_sending([sending], NOW)
    later = NOW + timedelta(minutes=1)
    with engine.begin() as connection:
        claims.claim(connection, [held], NOW)
        claims.give_back(connection, [GiveBack(held, error_code="template"),
                                      GiveBack(sending, error_code="template", rule_id="content")], later)

    rows = {r["id"]: r for r in attempt_rows(engine)}
    assert (rows[held]["status"], rows[held]["error_code"], rows[held]["rule_id"]) == ("planned", "template", None)
    assert (rows[sending]["status"], rows[sending]["error_code"], rows[sending]["attempted_at"]) == (
        "sending", None, NOW)


# the ledger: suppressions lifted --------------------------------------------------------------------------------

def active_suppressions(engine: Engine) -> list[tuple[str, str, Any]]:
    with engine.connect() as connection:
        return [(r.channel, r.source, r.lifted_at) for r in connection.execute(
            select(suppressions).order_by(suppressions.c.id))]


def test_lifting_an_opt_out_lifts_only_that_channels_active_one(engine: Engine) -> None:
    """A START for SMS lifts the SMS opt-out of that number, not one of another channel; an old lift stays as it was."""
    digest, earlier, later = address_hash(PHONE), NOW - timedelta(days=2), NOW + timedelta(hours=1)
    with engine.begin() as connection:
        assert suppress_hash(connection, "sms", digest, "masked", "inbound_stop", earlier)
        assert lift_hash(connection, "sms", digest, earlier, sources=OPT_OUT_SOURCES) == 1
        assert suppress_hash(connection, "sms", digest, "masked", "inbound_stop", NOW)
        assert suppress_hash(connection, "email", digest, "masked", "inbound_stop", NOW)

        assert lift_hash(connection, "sms", digest, later, sources=OPT_OUT_SOURCES) == 1

    assert active_suppressions(engine) == [("sms", "inbound_stop", earlier), ("sms", "inbound_stop", later),
                                           ("email", "inbound_stop", None)]


# the ledger: STOP and START ordered by when they were received -------------------------------------------------

PHONE = "+8613800138007"
OTHER_PHONE = "+8613900139009"


def reply(decision: str, received_at: datetime, phone: str = PHONE, channel: str = "sms") -> InboundReply:
    keyword = {"opt_out": "STOP", "opt_in": "START"}.get(decision)
    return InboundReply(message_sid="SM" + secrets.token_hex(16), channel=channel, sender=mask_phone(phone),
                        address_hash=address_hash(phone), text=keyword or "hello", decision=decision,
                        keyword=keyword, received_at=received_at)


def opted_out(engine: Engine, phone: str = PHONE, channel: str = "sms") -> bool:
    with engine.connect() as connection:
        found = connection.execute(select(suppressions.c.id).where(
            suppressions.c.channel == channel, suppressions.c.address_hash == address_hash(phone),
            suppressions.c.lifted_at.is_(None))).first()
    return found is not None


@pytest.mark.parametrize(("newer_phone", "newer_channel", "newer_decision", "outcome"), [
    pytest.param(OTHER_PHONE, "sms", "opt_in", "suppressed", id="START-from-another-number"),
    pytest.param(PHONE, "whatsapp", "opt_in", "suppressed", id="START-on-another-channel"),
    pytest.param(PHONE, "sms", "other", "suppressed", id="other-text-from-the-number"),
    pytest.param(PHONE, "sms", "opt_out", "already", id="another-STOP-from-the-number"),
])
def test_a_stop_applied_late_is_honoured_unless_that_number_sent_a_newer_start(
    engine: Engine, newer_phone: str, newer_channel: str, newer_decision: str, outcome: str
) -> None:
    """A STOP kept in the spool meanwhile is superseded only by a newer START of the same number on the same channel."""
    stop_at = NOW - timedelta(minutes=5)
    assert record_reply(engine, reply(newer_decision, NOW, newer_phone, newer_channel), NOW) is not None

    assert record_reply(engine, reply("opt_out", stop_at), NOW) == outcome
    assert opted_out(engine)


def test_a_start_applied_late_keeps_an_opt_out_recorded_after_it(engine: Engine) -> None:
    """A START kept in the spool lifts only opt-outs recorded before it was sent, not a later carrier opt-out."""
    with engine.begin() as connection:
        assert suppress_hash(connection, "sms", address_hash(PHONE), "masked", "provider_opt_out", NOW)

    assert record_reply(engine, reply("opt_in", NOW - timedelta(minutes=5)), NOW) == "none"
    assert opted_out(engine)


# the ledger: outcomes --------------------------------------------------------------------------------------------

def test_every_outcome_keeps_its_own_status_and_a_send_missing_facts_keeps_its_hand_over_time(engine: Engine) -> None:
    """Only a plain send takes the short path: a failure with every fact stays failed; a send lacking a fact keeps
    the send time and template its hand-over recorded (the caps count from that time)."""
    failed, partial = add_attempts(engine, "planned", "planned")
    handed = NOW - timedelta(minutes=1)
    Ledger(engine).start_sending([failed, partial], handed)
    facts = {"template_version": "v1", "content_hash": "h", "provider": "twilio", "attempted_at": handed}
    Ledger(engine).finish_attempts([
        AttemptOutcome(failed, "failed", template="gentle", duration_ms=5, **facts),
        AttemptOutcome(partial, "sent", provider_message_id="SM2", template=None, duration_ms=None,
                       **{**facts, "attempted_at": None}),
    ], NOW)

    rows = {r["id"]: r for r in attempt_rows(engine)}
    assert rows[failed]["status"] == "failed"
    assert (rows[partial]["status"], rows[partial]["attempted_at"], rows[partial]["template"]) == (
        "sent", handed, "gentle")


# a further try written twice ---------------------------------------------------------------------------------------
def test_a_further_try_inserted_again_is_not_a_second_row(engine: Engine) -> None:
    row = {"reminder_key": "K-retry", "account_id": "A", "step": "gentle", "occurrence": 0, "channel": "sms",
           "try_no": 2, "status": "planned", "created_at": NOW, "updated_at": NOW}
    with engine.begin() as connection:
        first = claims.insert_try(connection, row)
        again = claims.insert_try(connection, {**row, "status": "claimed"})
    assert isinstance(first, int) and again is None
    assert [(r["id"], r["status"]) for r in attempt_rows(engine)] == [(first, "planned")]


# replies: an opt-out word inside a longer reply --------------------------------------------------------------------
@pytest.mark.parametrize("reply", ["i said stop to them nonstop", "why stop here nonstop", "nonstop stop nonstop"])
def test_an_opt_out_word_inside_a_reply_is_unclear_even_when_it_also_occurs_inside_another_word(reply: str) -> None:
    found = recognise(reply)
    assert (found.decision, found.keyword) == (Decision.UNCLEAR, "STOP")


# civil language: phrases on word boundaries -------------------------------------
def test_a_latin_phrase_with_inner_punctuation_matches_whole_words_only() -> None:
    phrases = ("x-ray", "ray-x")
    assert content._blocked(phrases, ["box-ray and ray-xenon"]) == []
    assert content._blocked(phrases, ["an x-ray, a ray-x"]) == ["x-ray", "ray-x"]



# -- reading an inbound reply: which number it came from --------------------------------------------------------

def test_a_reply_is_read_from_its_sender_in_the_region_twilio_names_before_the_one_of_our_number() -> None:
    from dispatcher.replies.inbound import read_reply

    at = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)
    vocabulary = Vocabulary.build()

    def read(**form: str) -> tuple[str, str, str, str | None, str] | None:
        reply = read_reply(form, vocabulary, "GB", at)
        if reply is None:
            return None
        assert reply.received_at == at and reply.channel == "sms"
        return reply.message_sid, reply.address_hash, reply.decision, reply.keyword, reply.sender

    us, fr, nl, gb = "+12025550143", "+33612345678", "+31612345678", "+447911123456"
    # 0612345678 is a mobile number in France and in the Netherlands alike: where it was read decides
    assert read(MessageSid=" SM1 ", From="06 12 34 56 78", FromCountry="FR", To="+31201234567", Body="STOP") == (
        "SM1", address_hash(fr), "opt_out", "STOP", mask_phone(fr))  # Twilio's FromCountry before our number's
    assert read(MessageSid="SM2", From="0612345678", To="+31201234567", Body="STOP")[:2] == (
        "SM2", address_hash(nl))  # without FromCountry, the region of the number it was sent to
    # with neither, the default region
    assert read(MessageSid="SM3", From="07911123456", Body="hello")[:3] == ("SM3", address_hash(gb), "other")
    # a message id is cut to the column's 64 characters; no body reads as nothing recognised
    assert read(MessageSid="S" * 70, From=us) == ("S" * 64, address_hash(us), "other", None, mask_phone(us))
    # without a message id or a sender there is nothing to record
    assert read(From=us, Body="STOP") is None
    assert read(MessageSid="  ", From=us, Body="STOP") is None
    assert read(MessageSid="SM4", Body="STOP") is None
    assert read(MessageSid="SM5", From="   ", Body="STOP") is None


# -- normalising a reply: what vanishes, what splits words ----------------------------------------------------------

VANISHING = {"vs1-fe00": "\ufe00", "vs16-fe0f": "\ufe0f", "vs17-e0100": "\U000e0100", "vs256-e01ef": "\U000e01ef",
             "zero-width-space": "\u200b", "keycap-enclosing-mark": "\u20e3", "apostrophe": "'",
             "right-quote": "\u2019", "modifier-apostrophe": "\u02bc", "grave": "`"}
"""Characters dropped without a trace: inside a word they leave it whole."""

SPLITTING = {"before-fe00": "\ufdfd", "after-fe0f": "\ufe10", "before-e0100": "\U000e00ff",
             "after-e01ef": "\U000e01f0", "comma": ",", "emoji": "\U0001f6d1"}
"""Characters just outside those ranges (a symbol, punctuation, unassigned code points): they split words."""


@pytest.mark.parametrize("char", list(VANISHING.values()), ids=list(VANISHING))
def test_format_characters_and_variation_selectors_vanish_inside_a_word(char: str) -> None:
    assert normalise(f"ST{char}OP") == "stop"
    assert recognise(f"STOP{char}", Vocabulary.build()).decision is Decision.OPT_OUT


@pytest.mark.parametrize("char", list(SPLITTING.values()), ids=list(SPLITTING))
def test_characters_next_to_the_dropped_ranges_split_words(char: str) -> None:
    assert normalise(f"ST{char}OP") == "st op"


def test_phrases_added_in_schedules_yaml_extend_the_shipped_ones() -> None:
    extended = Vocabulary.build(opt_out={"en-US": ["leave me alone"]}, opt_in={"zh-CN": ["恢复提醒"]})
    assert recognise("Leave me ALONE!", extended) == recognise("Leave me ALONE!", extended)
    assert (recognise("Leave me ALONE!", extended).decision, recognise("Leave me ALONE!", extended).keyword) == (
        Decision.OPT_OUT, "leave me alone")
    assert recognise("恢复提醒", extended).decision is Decision.OPT_IN
    assert recognise("STOP", extended).decision is Decision.OPT_OUT  # the shipped phrases stay
    shipped = Vocabulary.build()
    assert recognise("Leave me ALONE!", shipped).decision is not Decision.OPT_OUT
    assert recognise("恢复提醒", shipped).decision is not Decision.OPT_IN


# -- call caps per debt: calls this run planned count too ------------------------------------------------------------

def test_calls_planned_in_this_run_count_toward_the_per_debt_cap_of_that_debt_only() -> None:
    now = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
    account = Account(account_id="L1", name="Ann Lee", phone="+12025550143", email=None, push_token=None,
                      locale="en-US", timezone="America/New_York", currency="USD", overdue_amount=Decimal("50.00"),
                      due_date=now.date() - timedelta(days=31), deadline=None, repayment_account="0001 2345")
    other = replace(account, account_id="L2")
    rule = CallCapRule(CALL_LIMITS["us"])
    history = BatchHistory()
    for n in range(7):  # known to the run as contacts (planned now or read back), not among the recorded calls
        history.add_contact(Contact(100 + n, other.account_id, "voice", address_hash(account.phone or "x"),
                                    now - timedelta(hours=n + 1)))
    assert rule.check(account, ChannelKind.VOICE, account.phone or "", now, history) is None  # another debt's
    for n in range(6):
        history.add_contact(Contact(n + 1, account.account_id, "voice", "elsewhere", now - timedelta(hours=n + 1)))
    history.add_contact(Contact(7, account.account_id, "sms", "elsewhere", now - timedelta(hours=1)))
    assert rule.check(account, ChannelKind.VOICE, account.phone or "", now, history) is None  # 6 calls, 1 SMS
    history.add_contact(Contact(8, account.account_id, "voice", None, now - timedelta(days=7)))  # 7 days ago: out
    assert rule.check(account, ChannelKind.VOICE, account.phone or "", now, history) is None
    history.add_contact(Contact(9, account.account_id, "voice", None, now - timedelta(minutes=5)))
    block = rule.check(account, ChannelKind.VOICE, account.phone or "", now, history)
    assert block is not None and block.rule_id == "call-cap" and block.defer
    assert block.not_before == now - timedelta(hours=6) + timedelta(days=7)  # when the oldest of the 7 ages out
