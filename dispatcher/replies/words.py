"""What a borrower's reply means: opt-out, opt-in, unclear (a person should read it) or something else.

A reply is normalised first: NFKC (full-width ``ＳＴＯＰ`` is ``stop``), format and
zero-width characters dropped, case-folded, apostrophes inside words dropped
(``don't`` is ``dont``), punctuation, symbols and emoji turned into spaces, spaces
collapsed. Then, in this order:

* **opt_out**: the reply is, starts with or ends with an opt-out phrase (at a word
  boundary: ``STOPS`` is not ``STOP``; Chinese needs no spaces: ``TD退订``, ``回复TD``);
* **opt_in**: the whole reply is an opt-in word (``START``; ``yes I will pay`` lifts nothing);
* **unclear**: an opt-out phrase inside the reply, a word that may be a refusal or a
  complaint (``no``, ``never``, ``harass``, ``不要``, ``骚扰`` …), or only emoji / punctuation (``🛑``);
* **other**: anything else (``I will pay tomorrow``, ``好的``, ``yes I will pay``, an empty reply).

``don't stop`` ends with ``stop`` and opts out: a wrong opt-out costs a START, a missed one breaks the law.

The shipped phrases per locale are below; ``schedules.yaml`` may add more (``replies:``).
Every locale's phrases apply to every reply: a borrower may answer in any language.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_OPT_OUT: Mapping[str, tuple[str, ...]] = {
    "en-US": ("STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "UNSUB", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT",
              "OPT OUT", "OPT-OUT", "please stop", "stop please", "remove me", "do not contact me",
              "do not text me", "dont text me", "stop texting me", "stop messaging me"),
    "zh-CN": ("退订", "TD", "T", "取消", "取消订阅", "不要再发", "别再发", "不要发了", "停止发送", "停止", "拒收",
              "退出"),
}
"""Opt-out phrases shipped per locale (US: FCC 2024 TCPA order's words; China: 回复TD退订 practice)."""

DEFAULT_OPT_IN: Mapping[str, tuple[str, ...]] = {
    "en-US": ("START", "UNSTOP", "YES"),
    "zh-CN": ("开始", "恢复"),
}
"""Replies that lift an SMS opt-out, only when they are the whole reply."""

DEFAULT_DOUBT: Mapping[str, tuple[str, ...]] = {
    "en-US": ("no", "not", "dont", "never", "leave me alone", "harass", "harassing", "harassment", "spam",
              "block", "remove", "wrong number", "lawyer", "complain", "complaint", "report", "sue"),
    "zh-CN": ("不要", "别", "不用", "骚扰", "拉黑", "投诉", "举报", "打错", "不是我", "停", "滚", "律师"),
}
"""Words that may be a refusal or a complaint: a reply holding one (and no opt-out) is ``unclear``."""

_APOSTROPHES = frozenset("'\u2018\u2019\u02bc\u0060\u00b4")
_DROPPED_MARKS = frozenset({"Me"})


class Decision(StrEnum):
    """What a reply asks for."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    UNCLEAR = "unclear"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Recognised:
    """A reply's decision and the phrase that decided it (``None`` for ``other``)."""

    decision: Decision
    keyword: str | None = None


def _dropped(char: str) -> bool:
    """Format (zero-width, BOM, joiners, tags), variation selectors and enclosing marks vanish without a trace."""
    code = ord(char)
    return (unicodedata.category(char) == "Cf" or unicodedata.category(char) in _DROPPED_MARKS
            or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or char in _APOSTROPHES)


def _separator(char: str) -> bool:
    """Punctuation, symbols (emoji), spaces and control characters split words."""
    return unicodedata.category(char)[0] in "PSZC" or char.isspace()


def normalise(text: str) -> str:
    """``"\u200bStop! 🛑"`` → ``"stop"``; ``"OPT-OUT"`` → ``"opt out"``; ``"退订。"`` → ``"退订"``."""
    # apostrophes go first: NFKC turns an acute accent used as one (don´t) into a space and a combining mark
    folded = unicodedata.normalize("NFKC", "".join(c for c in text if c not in _APOSTROPHES)).casefold()
    kept = "".join(" " if _separator(c) else c for c in folded if not _dropped(c))
    return " ".join(kept.split())


def _wordlike(char: str) -> bool:
    """Letters and digits of space-separated scripts; a CJK character is a word of its own."""
    return char.isalnum() and unicodedata.east_asian_width(char) not in ("W", "F")


def _boundary(text: str, index: int) -> bool:
    """Whether a word may start or end at ``index`` of normalised ``text``."""
    if index <= 0 or index >= len(text):
        return True
    return not (_wordlike(text[index - 1]) and _wordlike(text[index]))


def _inside(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` on word boundaries."""
    start = text.find(phrase)
    while start >= 0:
        if _boundary(text, start) and _boundary(text, start + len(phrase)):
            return True
        start = text.find(phrase, start + 1)
    return False


def _at_edge(text: str, phrase: str) -> bool:
    """``text`` is, starts with or ends with ``phrase`` (on a word boundary)."""
    if text.startswith(phrase) and _boundary(text, len(phrase)):
        return True
    return text.endswith(phrase) and _boundary(text, len(text) - len(phrase))


@dataclass(frozen=True)
class Vocabulary:
    """Normalised phrases, longest first, each with the spelling it was given in."""

    opt_out: tuple[tuple[str, str], ...]
    opt_in: tuple[tuple[str, str], ...]
    doubt: tuple[tuple[str, str], ...]

    @classmethod
    def build(cls, opt_out: Mapping[str, Iterable[str]] | None = None,
              opt_in: Mapping[str, Iterable[str]] | None = None) -> Vocabulary:
        """The shipped phrases plus ``opt_out`` / ``opt_in`` (per locale, e.g. from schedules.yaml)."""
        return cls(_phrases(DEFAULT_OPT_OUT, opt_out), _phrases(DEFAULT_OPT_IN, opt_in), _phrases(DEFAULT_DOUBT))

    def recognise(self, reply: str) -> Recognised:
        """The decision for one reply's text."""
        text = normalise(reply)
        if not text:  # only emoji or punctuation (🛑, 🖕) may be a refusal; nothing at all is not
            return Recognised(Decision.UNCLEAR if reply.strip() else Decision.OTHER)
        for norm, given in self.opt_out:
            if _at_edge(text, norm):
                return Recognised(Decision.OPT_OUT, given)
        for norm, given in self.opt_in:
            if text == norm:
                return Recognised(Decision.OPT_IN, given)
        for norm, given in (*self.opt_out, *self.doubt):
            if _inside(text, norm):
                return Recognised(Decision.UNCLEAR, given)
        return Recognised(Decision.OTHER)


def _phrases(shipped: Mapping[str, Iterable[str]], extra: Mapping[str, Iterable[str]] | None = None,
             ) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    for lists in (shipped, extra or {}):
        for phrases in lists.values():
            for phrase in phrases:
                norm = normalise(phrase)
                if norm:
                    found.setdefault(norm, phrase)
    return tuple(sorted(found.items(), key=lambda item: (-len(item[0]), item[0])))


DEFAULT_VOCABULARY = Vocabulary.build()
"""The shipped phrases only."""


def recognise(reply: str, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> Recognised:
    """The decision for ``reply`` under ``vocabulary`` (the shipped phrases by default)."""
    return vocabulary.recognise(reply)
