"""``civil``, ``content`` and ``third-party``: what a reminder's text must and must not say.

* ``civil``: no phrase of the locale's blocklist (threats, insults; ``compliance.blocklist`` adds to it);
  ``civil-court``, ``civil-police``, ``civil-criminal``, ``civil-credit``, ``civil-contacts``: no
  threat of court or a lawsuit, of arrest or the police, of a criminal record, of the borrower's
  credit record, or of telling family, employer or contacts (:data:`~dispatcher.rules.wordlists.CIVIL_RULES`);
* ``content``: brand, amount, deadline, the repayment account in full (where to pay: a borrower
  cannot pay to ``**** 9593``) or the pay link, help contact, an official way to verify the
  message, the opt-out wording (SMS, email); no other run of 8 or more digits (the borrower's
  own card or ID number is shown masked);
* ``third-party``: a push notification's title and body show no amount and no debt
  wording, as anyone can read a lock screen; nor does a call's greeting (``voice_greeting.txt.j2``),
  which an answering machine records. A call states the content elements in ``voice.txt.j2``
  (no opt-out wording) and its greeting leaves the hotline.

:func:`lint_templates` checks every template × locale × channel with sample data
(``dispatcher validate`` and every load of schedules.yaml), on the template snapshot
that will be rendered; :class:`ContentCheck` checks each rendered message again
just before it is sent.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from ahocorasick_rs import AhoCorasick

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.compose.filters import localdate, mask, money
from dispatcher.compose.layout import PARTS, TemplateSet, template_name
from dispatcher.compose.renderer import (
    Composer,
    RenderContext,
    Rendered,
    TemplateProblem,
    check_templates,
    sample_context,
)
from dispatcher.errors import TemplateError
from dispatcher.regions import country_of
from dispatcher.rules.base import Block
from dispatcher.rules.policy import Policy, resolve_policy
from dispatcher.rules.wordlists import (
    CIVIL_RULES,
    LOCK_SCREEN_WORDS,
    OPT_OUT_WORDING,
    ULTIMATUM,
    CivilRule,
    language_of,
)
from dispatcher.schedule.models import Brand, Schedule, Step

_DIGIT_RUN = re.compile(r"\d(?:[ \-]?\d){7,}")
_URL = re.compile(r"(?:[Hh](?i:ttps?://)|[Mm](?i:ailto:))[^\s<>\"')]+")
"""A link (``http``, ``https``, ``mailto`` in any case): its first letter spelled out (only ``h``/``H`` and ``m``/``M``
match those case-insensitively). Matched only where :func:`_cut_links` finds a scheme's colon."""
_SCHEME_LENGTHS = {"p": 4, "P": 4, "s": 5, "S": 5, "\u017f": 5, "o": 6, "O": 6}
"""The length of the scheme a colon ends, by the letter before it (``http:``, ``https:`` or ``ſ``, ``mailto:``): every
letter that :data:`_URL` matches there case-insensitively."""
_TAG = re.compile(r"<[^>]*>")
_SHOWN = ("alt", "title", "aria-label", "placeholder")
"""Attributes whose values a reader is shown (an image's text, a tooltip, a label)."""
_SHOWN_BYTES = tuple(name.encode() for name in _SHOWN)
_ATTRIBUTE_VALUE_BYTES = re.compile(rb"""\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""")
_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_") | frozenset(range(0x80, 0x100))
"""Bytes before an attribute's name that make it part of a longer name (``data-title``, ``salt``, ``étitle``: a byte
of a letter beyond ASCII), lowered."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|[。！？；;\n]+")


def _phrase_regex(phrase: str) -> str:
    """Latin-script phrases match whole words ("jail", not "Jailyn"); others match anywhere."""
    escaped = re.escape(phrase)
    if phrase.isascii() and phrase[:1].isalnum() and phrase[-1:].isalnum():
        escaped = rf"\b{escaped}\b"
    return escaped


@lru_cache(maxsize=64)
def _blocklist_pattern(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern for a whole list (one scan of the text, not one per phrase), longest phrases first."""
    if not phrases:
        return None
    ordered = sorted(set(phrases), key=len, reverse=True)
    return re.compile("|".join(_phrase_regex(p) for p in ordered), re.IGNORECASE)


_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i"})
"""Letters ``re.IGNORECASE`` matches to an ASCII letter that ``str.casefold`` does not turn into it (İ ı)."""
_FOLDED = tuple(chr(code) for code in _FOLD)


def _caseless_beyond_ascii(phrase: str) -> bool:
    return all(c.isascii() or c.lower() == c == c.upper() for c in phrase)


@lru_cache(maxsize=64)
def _screen(phrases: tuple[str, ...]) -> AhoCorasick | None:
    """An automaton that finds, in folded text (:func:`_folded`), wherever a phrase's own pattern matches, and more:
    the phrases case-folded, without word boundaries, case-sensitive, all in one pass over the text (about 5x
    quicker on an email than a regular expression of them, which tried every position of the text). None when a
    phrase has cased letters beyond ASCII, or none is left."""
    if not all(_caseless_beyond_ascii(p) for p in phrases):
        return None
    folded = sorted({_folded(p) for p in phrases if p})
    return AhoCorasick(folded) if folded else None


def _may_contain(phrases: tuple[str, ...], texts: list[str]) -> bool:
    """False when no phrase of ``phrases`` is in ``texts`` (as :func:`_blocked` finds them); True when one may be."""
    if not any(phrases):
        return False
    screen = _screen(phrases)
    if screen is not None:
        try:
            return bool(screen.find_matches_as_indexes(_folded("\n".join(texts))))
        except UnicodeEncodeError:  # a lone surrogate in the data: the exact patterns read it
            pass
    exact = _blocklist_pattern(phrases)
    return exact is not None and any(exact.search(text) for text in texts)


def _folded(text: str) -> str:
    """``text`` case-folded (Σ, σ and ς alike), with the letters of :data:`_FOLD` turned into theirs."""
    if any(letter in text for letter in _FOLDED):  # rare: translate() costs more than the search
        text = text.translate(_FOLD)
    return text.casefold()


def _blocked(phrases: tuple[str, ...], texts: list[str]) -> list[str]:
    """The listed phrases found in ``texts``, as listed."""
    pattern = _blocklist_pattern(phrases)
    if pattern is None:
        return []
    found = {_folded(m.group()) for text in texts for m in pattern.finditer(text)}  # "ſued" is "sued"
    return [p for p in phrases if _folded(p) in found]


_EMAIL_UNSUBSCRIBE = ("unsubscribe", "退订")


def _texts(rendered: Rendered) -> list[str]:
    return [t for t in (rendered.subject, rendered.title, rendered.body, rendered.html) if t]


def _wording(rendered: Rendered) -> list[str]:
    """What a reader of ``rendered`` reads: its texts without links (unsubscribe tokens, payment links), and of its
    HTML the text and the attributes a reader is shown (``alt``, ``title`` …), character references read."""
    texts = [t for t in (rendered.subject, rendered.title, rendered.body) if t]
    if rendered.html:
        texts.append(_read_html(rendered.html))
    return [_cut_links(t) for t in texts]


def _cut_links(text: str) -> str:
    """``text`` with each link a space, as ``_URL.sub(" ", text)``; tried only where a colon ends a scheme (a regex
    search tried the pattern at every letter: 17 ns a letter, a third of an email's check)."""
    pieces: list[str] = []
    done = 0  # text[:done] is settled
    colon = text.find(":")
    while colon >= 0:
        length = _SCHEME_LENGTHS.get(text[colon - 1]) if colon else None
        if length is not None and colon - length >= done:
            start = colon - length
            link = _URL.match(text, start)
            if link is not None:
                pieces.append(text[done:start])
                done = link.end()
                colon = done - 1
        colon = text.find(":", colon + 1)
    if not pieces:
        return text
    pieces.append(text[done:])
    return " ".join(pieces)


def _read_html(markup: str) -> str:
    """The text of ``markup`` as a reader reads it: each tag a space, runs of spaces one (``will <b>sue</b>`` reads
    ``will sue``, ``sue</td><td>you`` reads ``sue you``, ``jail</td>x`` is not ``jailx``), ``&#115;ue`` read as
    ``sue``, and after it the values of the attributes a reader is shown."""
    text = "\n".join((_TAG.sub(" ", markup), *_shown_values(markup)))
    while "  " in text:  # a few passes of a quick replace cost less than a regex scan
        text = text.replace("  ", " ")
    return html.unescape(text) if "&" in text else text


def _shown_values(markup: str) -> list[str]:
    """The values of :data:`_SHOWN` attributes in ``markup`` (and of such ``name=value`` in its text: harmless).

    Attribute names are ASCII and matched without regard to ASCII case, as a browser matches them; so the names are
    found in the UTF-8 bytes of ``markup`` lowered (``str.lower`` of text beyond ASCII took 20 µs an email, and a
    letter that lowers to two, as İ does, would shift the positions), and each value is read there."""
    data = markup.encode("utf-8", "surrogatepass")  # a lone surrogate in the data is read, not refused
    lowered = data.lower()  # ASCII letters only
    values = []
    for name in _SHOWN_BYTES:
        at = lowered.find(name)
        while at >= 0:
            if at == 0 or lowered[at - 1] not in _NAME_BYTES:
                value = _ATTRIBUTE_VALUE_BYTES.match(data, at + len(name))
                if value is not None:
                    values.append(next(v for v in value.groups() if v is not None).decode("utf-8", "surrogatepass"))
            at = lowered.find(name, at + 1)
    return values


def _without(text: str, allowed: tuple[str, ...]) -> str:
    for item in allowed:
        if item:
            text = text.replace(item, " ")
    return text


def _in_ultimatum(rule: CivilRule, language: str, words: list[str]) -> list[str]:
    """The rule's ultimatum-only terms found in a sentence that also sets a condition on paying."""
    terms, markers = rule.in_ultimatum.get(language, ()), ULTIMATUM.get(language, ())
    if not _blocked(terms, words):  # nearly every message: no sentence to look at
        return []
    sentences = [s for text in words for s in _SENTENCE_END.split(text) if _blocked(markers, [s])]
    return _blocked(terms, sentences)


@lru_cache(maxsize=16)
def _civil_terms(language: str) -> tuple[str, ...]:
    """Every phrase and ultimatum term of every civil rule in ``language``: one scan tells whether any may apply."""
    return tuple(term for rule in CIVIL_RULES
                 for term in (*rule.phrases.get(language, ()), *rule.in_ultimatum.get(language, ())))


def civil_violations(locale: str, words: list[str]) -> Iterator[tuple[str, str, str]]:
    """(rule id, message, phrase) for each threat of :data:`CIVIL_RULES` in ``words`` (texts without links)."""
    language = language_of(locale)
    if not _may_contain(_civil_terms(language), words):  # nearly every message
        return
    for rule in CIVIL_RULES:
        for phrase in _blocked(rule.phrases.get(language, ()), words):
            yield rule.rule_id, f"the phrase {phrase!r} is not allowed (a threat of {rule.what})", phrase
        for term in _in_ultimatum(rule, language, words):
            yield (rule.rule_id, f"the phrase {term!r} in a sentence that sets a condition on paying is a threat of "
                   f"{rule.what}; state a notice the law requires as a plain fact", term)


def violations(rendered: Rendered, policy: Policy, brand: Brand,
               account: Account) -> Iterator[tuple[str, str, str]]:
    """(rule id, message, offending text) for every forbidden thing: threats, long numbers, push safety."""
    words = _wording(rendered)
    blocklist = policy.blocked_phrases(rendered.locale)
    if _may_contain(_civil_terms(language_of(rendered.locale)) + blocklist, words):  # one screen for both lists
        yield from civil_violations(rendered.locale, words)
        for phrase in _blocked(blocklist, words):
            yield "civil", f"the phrase {phrase!r} is not allowed (threat or insult)", phrase
    allowed = (brand.hotline, brand.website, brand.help_email or "", account.repayment_account,
               mask(account.repayment_account), rendered.data.get("deadline", ""))
    for text in words:  # links carry ids and signatures, not the borrower's numbers
        run = _DIGIT_RUN.search(_without(text, allowed))
        if run:
            digits = sum(c.isdigit() for c in run.group())
            yield ("content", f"a run of {digits} digits ({run.group()!r}) looks like a full account, card or "
                   "ID number: mask it", run.group())
            break
    if rendered.channel is ChannelKind.VOICE:  # the greeting is what an answering machine or a relative hears
        yield from _exposed(rendered, account, "a call's greeting says", "say the rest after the key press",
                            rendered.title or "")
    if rendered.channel is ChannelKind.PUSH and policy.push_generic:
        shown = " ".join(t for t in (rendered.title, rendered.body) if t).lower()
        words = [w for w in LOCK_SCREEN_WORDS.get(language_of(rendered.locale), ()) if w.lower() in shown]
        if money(account.overdue_amount, account.currency, rendered.locale).lower() in shown:
            words.append("the amount")
        if words:
            yield ("third-party", f"push notification text shows {', '.join(map(repr, words))} on the lock screen; "
                   "keep details in the app", words[0])


def _exposed(rendered: Rendered, account: Account, what: str, instead: str,
             text: str) -> Iterator[tuple[str, str, str]]:
    """``third-party`` when ``text`` (heard or seen by anyone) has debt wording or the amount."""
    shown = text.lower()
    words = [w for w in LOCK_SCREEN_WORDS.get(language_of(rendered.locale), ()) if w.lower() in shown]
    if money(account.overdue_amount, account.currency, rendered.locale).lower() in shown:
        words.append("the amount")
    if words:
        yield "third-party", f"{what} {', '.join(map(repr, words))}; {instead}", words[0]


def missing_elements(rendered: Rendered, ctx: RenderContext, brand: Brand) -> Iterator[str]:
    """What an SMS or email must state but ``rendered`` does not."""
    if rendered.channel is ChannelKind.PUSH:
        return
    text = "\n".join(_texts(rendered))
    account, locale = ctx.account, rendered.locale
    required = {
        "the brand": [brand.name],
        "the amount": [money(account.overdue_amount, account.currency, locale)],
        "the deadline": [localdate(ctx.deadline, locale)],
        "the repayment account in full or the pay link": [account.repayment_account, account.pay_link or ""],
        "a help contact": [brand.hotline, brand.help_email or brand.hotline],
        "an official way to verify the message": [brand.hotline, brand.website],
    }
    if rendered.channel is ChannelKind.SMS:
        required["the opt-out wording"] = list(OPT_OUT_WORDING.get(language_of(locale), ("STOP",)))
    elif rendered.channel is ChannelKind.VOICE:  # no opt-out wording for calls; the greeting leaves a number
        required["in its greeting, the hotline to call back"] = [brand.hotline] if brand.hotline in (
            rendered.title or "") else []
    else:
        required["an unsubscribe link or wording"] = [ctx.unsubscribe_url or "", *_EMAIL_UNSUBSCRIBE]
    for what, options in required.items():
        if not any(option and option.lower() in text.lower() for option in options):
            yield what


def _source(templates: TemplateSet, name: str) -> str:
    """The text of one part, for locating a finding; empty when absent or not UTF-8."""
    try:
        return templates.source(name) or ""
    except UnicodeDecodeError:
        return ""


def _line_of(templates: TemplateSet, rendered: Rendered, template: str, needle: str) -> tuple[str, int]:
    """The part file and line of ``needle``: where the source spells it, else where the rendered part shows it (of
    an HTML part, where a line spells it or reads as it: ``to <b>court</b>``, ``&#112;olice``).

    Text that a variable produced (an unmasked account number) is found in the
    rendered part; its line there is the template line when the part has no
    multi-line blocks, which reminder templates rarely have. Not found: the first part, line 1.
    """
    parts = PARTS[rendered.channel]
    names = [template_name(template, rendered.locale, p.filename) for p in parts]
    texts = {"body": rendered.body, "subject": rendered.subject, "html": rendered.html, "title": rendered.title}
    for place in ("source", "rendered"):
        for part, name in zip(parts, names, strict=True):
            text = _source(templates, name) if place == "source" else texts.get(part.field) or ""
            for number, line in enumerate(text.splitlines(), start=1):
                read = _read_html(line) if part.field == "html" else line  # as the check read it
                if needle and (needle.lower() in line.lower() or needle.lower() in read.lower()):
                    return str(templates.path(name)), number
    return str(templates.path(names[0])), 1


def lint_templates(schedule: Schedule, templates: TemplateSet | Path, policy: Policy) -> list[TemplateProblem]:
    """Every template the ladder uses × every locale present × every channel, checked with sample data.

    Checks the ``templates`` snapshot (or the directory, read once).
    """
    composer = Composer(templates, schedule)
    problems: list[TemplateProblem] = []
    seen: set[str] = set()
    for step in schedule.ladder:
        # an experiment's every variant, each as the step rendering it for everyone
        for view in [step.as_variant(name) for name in step.templates] if step.variants else [step]:
            if view.template_name in seen:
                continue
            seen.add(view.template_name)
            for locale in sorted(composer.templates.locales(view.template_name) & set(schedule.locales)):
                for channel in PARTS:  # the channels that have templates (a hand-off has none)
                    problems.extend(_lint_one(composer, schedule, view, locale, channel, policy))
    return problems


def _lint_one(composer: Composer, schedule: Schedule, step: Step, locale: str, channel: ChannelKind,
              policy: Policy) -> Iterator[TemplateProblem]:
    step_name, template = step.step, step.template_name
    if not all(template_name(template, locale, p.filename) in composer.templates.files for p in PARTS[channel]):
        return
    ctx = sample_context(schedule, step, locale)
    try:
        rendered = composer.render_in(ctx, channel, locale)
    except TemplateError:
        return  # reported by the template checks
    brand = composer.brand(locale, country_of(ctx.account))
    base = TemplateProblem(step_name, template, locale, channel, None, None, "")
    for rule, message, needle in violations(rendered, policy, brand, ctx.account):
        file, line = _line_of(composer.templates, rendered, template, needle)
        yield replace(base, file=file, line=line, message=f"{rule}: {message}", rule=rule)
    for what in missing_elements(rendered, ctx, brand):
        file, line = _line_of(composer.templates, rendered, template, "")
        yield replace(base, file=file, line=line, message=f"content: the {channel.value} message must state {what}",
                      rule="content")


class ContentCheck:
    """Checks each rendered message just before sending (the data may add what templates never had)."""

    def __init__(self, policy: Policy, composer: Composer) -> None:
        self.policy = policy
        self.composer = composer

    def check(self, rendered: Rendered, account: Account) -> Block | None:
        brand = self.composer.brand(rendered.locale, country_of(account))
        for rule, message, _text in violations(rendered, self.policy, brand, account):
            return Block(rule, message)
        return None


def template_checks(schedule: Schedule, templates: TemplateSet) -> list[TemplateProblem]:
    """Every template of the snapshot exists and renders with sample data, and passes the policy's content rules."""
    return check_templates(schedule, templates) + lint_templates(schedule, templates, resolve_policy(schedule))
