"""The authorisation letter collectors carry on a field visit, as text or as self-contained HTML.

It names the lender (the brand of the schedule's default locale), the collectors
with their staff ids, the days the visit is authorised, the verification code, and
how the borrower checks it: the brand website's ``/verify`` page or the hotline.
It shows no amount; the account id only as the lender's reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from html import escape

from dispatcher.ledger.visits import Collector
from dispatcher.schedule.models import Brand


@dataclass(frozen=True, slots=True)
class Letter:
    """What the letter says."""

    brand: Brand
    handoff_id: int
    account_id: str
    collectors: tuple[Collector, ...]
    valid_from: date
    valid_until: date
    code: str


def verify_url(website: str) -> str:
    """The brand's ``/verify`` page (the website itself when it already points there)."""
    site = website.rstrip("/")
    return site if site.endswith("/verify") else site + "/verify"


def shown_code(code: str) -> str:
    """The code in groups of five, easier to read out (``ABCDE-FGH23``); dashes are ignored when checked."""
    return "-".join(code[i:i + 5] for i in range(0, len(code), 5))


def letter_text(letter: Letter) -> str:
    b = letter.brand
    lines = [f"{b.name}: authorisation of a field visit", "",
             f"Reference: hand-off #{letter.handoff_id}, account {letter.account_id}", "",
             "The following collectors are authorised to visit on our behalf:"]
    lines += [f"  - {c.name} (staff id {c.staff_id})" for c in letter.collectors]
    lines += ["", f"Valid from {letter.valid_from.isoformat()} to {letter.valid_until.isoformat()} inclusive.", "",
              f"Verification code: {shown_code(letter.code)}", "",
              "Before you let anyone in or pay anything, check this letter through our official channels:",
              f"  - enter the code at {verify_url(b.website)}",
              f"  - or call our hotline {b.hotline} and give the code."]
    if b.help_email:
        lines.append(f"  - or write to {b.help_email}.")
    lines += ["", "Never pay a collector in cash or to a personal account; pay only to the lender's official "
              "repayment account.", ""]
    return "\n".join(lines)


_STYLE = ("body{font-family:sans-serif;max-width:40em;margin:1.5em auto;padding:0 1em;line-height:1.5}"
          ".code{font-family:monospace;font-size:1.6em;letter-spacing:.1em;border:2px solid #222;padding:.2em .5em;"
          "display:inline-block}table{border-collapse:collapse}td,th{border:1px solid #999;padding:.3em .6em;"
          "text-align:left}")


def letter_html(letter: Letter) -> str:
    """The letter as one HTML document: inline style, no script, no external resource."""
    b, e = letter.brand, escape
    rows = "".join(f"<tr><td>{e(c.name)}</td><td>{e(c.staff_id)}</td></tr>" for c in letter.collectors)
    url = verify_url(b.website)
    mail = f"<li>or write to {e(b.help_email)}.</li>" if b.help_email else ""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(b.name)}: authorisation of a field visit</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>{e(b.name)}</h1><h2>Authorisation of a field visit</h2>\n"
            f"<p>Reference: hand-off #{letter.handoff_id}, account {e(letter.account_id)}</p>\n"
            f"<p>The following collectors are authorised to visit on our behalf:</p>\n"
            f"<table><tr><th>Name</th><th>Staff id</th></tr>{rows}</table>\n"
            f"<p>Valid from <b>{letter.valid_from.isoformat()}</b> to <b>{letter.valid_until.isoformat()}</b>"
            f" inclusive.</p>\n<p>Verification code:<br><span class=\"code\">{e(shown_code(letter.code))}</span></p>\n"
            f"<p>Before you let anyone in or pay anything, check this letter through our official channels:</p>\n"
            f"<ul><li>enter the code at <a href=\"{e(url)}\">{e(url)}</a></li>"
            f"<li>or call our hotline {e(b.hotline)} and give the code.</li>{mail}</ul>\n"
            f"<p>Never pay a collector in cash or to a personal account; pay only to the lender's official "
            f"repayment account.</p>\n</body></html>\n")
