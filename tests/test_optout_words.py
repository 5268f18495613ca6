"""Reading borrowers' replies: opt-out, opt-in, unclear (for a person) or something else. Cases as data."""

from __future__ import annotations

import pytest

from dispatcher.replies.words import Decision, Vocabulary, normalise, recognise

OUT, IN, UNCLEAR, OTHER = Decision.OPT_OUT, Decision.OPT_IN, Decision.UNCLEAR, Decision.OTHER

CASES = [
    # reply, decision, the phrase that decided it
    # issue 10: each of these was ignored
    ("Stop.", OUT, "STOP"), ("STOP!", OUT, "STOP"), ("退订。", OUT, "退订"), ("退订！", OUT, "退订"),
    ("TD退订", OUT, "TD"), ("回复TD", OUT, "TD"), ("OPT OUT", OUT, "OPT OUT"), ("opt-out", OUT, "OPT OUT"),
    ("Please stop", OUT, "please stop"), ("\u200bSTOP\u200b", OUT, "STOP"), ("\ufeffSTOP", OUT, "STOP"),
    ("S\u200dTOP\u2060", OUT, "STOP"), ("STOP\u200e", OUT, "STOP"),
    # the FCC's words and the Chinese ones, in any case, width or punctuation
    ("stop", OUT, "STOP"), ("STOPALL", OUT, "STOPALL"), ("Unsubscribe", OUT, "UNSUBSCRIBE"),
    ("cancel", OUT, "CANCEL"), ("End", OUT, "END"), ("quit!!", OUT, "QUIT"), ("REVOKE", OUT, "REVOKE"),
    ("OptOut", OUT, "OPTOUT"), ("opt_out", OUT, "OPT OUT"), ("ＳＴＯＰ", OUT, "STOP"), ("ｔｄ", OUT, "TD"),
    ("T", OUT, "T"), ("t.", OUT, "T"), ("取消", OUT, "取消"), ("不要再发", OUT, "不要再发"),
    ("停止发送。", OUT, "停止发送"), ("stop please", OUT, "stop please"), ("STOP 🛑", OUT, "STOP"),
    ("🙏stop🙏", OUT, "STOP"), ("«STOP»", OUT, "STOP"), ("  stop\n", OUT, "STOP"),
    # starts or ends with one
    ("Stop texting me", OUT, "stop texting me"), ("stop it now", OUT, "STOP"), ("I said STOP", OUT, "STOP"),
    ("请回复TD", OUT, "TD"), ("退订谢谢", OUT, "退订"), ("cancel my messages", OUT, "CANCEL"),
    ("don't stop", OUT, "STOP"),  # decided: ends with STOP; a wrong opt-out costs one START
    # an apostrophe typed as any of its look-alikes, the acute accent too (NFKC would split the word at it)
    ("Don\u2019t text me", OUT, "dont text me"), ("DON\u00b4T TEXT ME!", OUT, "dont text me"),
    ("\uff24\uff2f\uff2e\uff07\uff34 text me", OUT, "dont text me"),
    # opt in: only the whole reply
    ("START", IN, "START"), (" Yes ", IN, "YES"), ("unstop", IN, "UNSTOP"), ("Start.", IN, "START"),
    ("开始", IN, "开始"),
    # unclear: an opt-out word inside, a possible refusal or complaint, only symbols
    ("I paid, stop now", UNCLEAR, "STOP"), ("no", UNCLEAR, "no"), ("never contact me", UNCLEAR, "never"),
    ("不要再打电话了", UNCLEAR, "不要"), ("这是骚扰", UNCLEAR, "骚扰"), ("wrong number", UNCLEAR, "wrong number"),
    ("this is harassment", UNCLEAR, "harassment"), ("🛑", UNCLEAR, None), ("!!!", UNCLEAR, None),
    # clearly something else
    ("I will pay tomorrow", OTHER, None), ("Hello", OTHER, None), ("", OTHER, None), ("   ", OTHER, None),
    ("好的", OTHER, None), ("STOPS", OTHER, None), ("please call me", OTHER, None), ("yes I will pay", OTHER, None),
    ("I can't", OTHER, None), ("Thanks", OTHER, None), ("stopwatch", OTHER, None), ("tender", OTHER, None),
    ("weekend", OTHER, None), ("I paid yesterday", OTHER, None),
]


@pytest.mark.parametrize(("reply", "decision", "keyword"), CASES, ids=[f"case{n}" for n in range(len(CASES))])
def test_reply_is_read_as(reply: str, decision: Decision, keyword: str | None) -> None:
    found = recognise(reply)
    assert (found.decision, found.keyword) == (decision, keyword)


@pytest.mark.parametrize(("text", "expected"), [
    ("\u200bStop! 🛑", "stop"), ("OPT-OUT", "opt out"), ("退订。", "退订"), ("ＴＤ", "td"), ("don’t", "dont"),
    ("a\u00a0\u3000b", "a b"), ("STRASSE", "strasse"), ("Straße", "strasse"), ("STOP\ufe0f", "stop"),
])
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_phrases_from_the_schedule_are_added_to_the_shipped_ones() -> None:
    vocabulary = Vocabulary.build({"en-US": ["no more texts"], "zh-CN": ["别发了"]}, {"en-US": ["Resume"]})

    assert vocabulary.recognise("No more texts!").decision is OUT
    assert vocabulary.recognise("别发了。").decision is OUT
    assert vocabulary.recognise("resume").decision is IN
    assert vocabulary.recognise("STOP").decision is OUT  # the shipped ones stay
    assert recognise("no more texts").decision is UNCLEAR  # not in the shipped list: a person reads it
