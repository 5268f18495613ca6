"""Phrases reminders must never contain, and words that must not show on a lock screen.

Matching is case-insensitive on the rendered text (Latin-script phrases as whole words). The
lists are starting points for a Chinese internet lender with some English-speaking
borrowers; ``compliance.blocklist`` in schedules.yaml adds phrases per locale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

CIVIL_BLOCKLIST: dict[str, tuple[str, ...]] = {
    "zh": (
        # threats and insults (China credit-card rules art. 68, NIFA 2018 convention)
        "后果自负", "走着瞧", "老赖", "骗子", "无赖", "不要脸", "人渣", "去死", "你全家", "冻结你的", "冻结您的",
    ),
    "en": (
        "or else", "you will regret", "deadbeat", "scammer", "loser", "shame on you", "public record of your",
        "seize your",
    ),
}
"""Rule ``civil``: threats and insults, by language; ``compliance.blocklist`` in schedules.yaml adds to it."""


@dataclass(frozen=True)
class CivilRule:
    """One kind of unlawful pressure a reminder must not apply, with its own rule id.

    ``phrases`` are refused wherever they appear; ``in_ultimatum`` only in a
    sentence that also holds one of :data:`ULTIMATUM` (a factual notice the law
    requires, "we may report information about your account to credit bureaus",
    stays allowed; "pay, otherwise your credit report …" does not).
    """

    rule_id: str
    what: str
    """What the threat is of: "court action or a lawsuit"."""
    phrases: Mapping[str, tuple[str, ...]]
    in_ultimatum: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


CIVIL_RULES: tuple[CivilRule, ...] = (
    CivilRule("civil-court", "court action or a lawsuit", {
        "zh": ("起诉", "诉讼", "法院", "传票", "律师函", "律师信", "法律责任", "法律程序", "法律手段", "追究法律",
               "司法", "强制执行", "失信被执行人", "仲裁", "判决"),
        "en": ("sue you", "we will sue", "we'll sue", "to sue", "suing", "sued", "lawsuit", "legal action",
               "legal proceedings", "legal steps", "litigation", "to court", "in court", "the court", "a court",
               "court action", "court case", "court order", "court date", "court summons", "summons",
               "judgment against", "small claims", "our lawyers", "our attorneys", "garnish"),
    }),
    CivilRule("civil-police", "arrest or the police", {
        "zh": ("报警", "报案", "公安", "警察", "警方", "派出所", "拘留", "逮捕", "抓捕", "坐牢", "入狱", "判刑",
               "立案"),
        "en": ("police", "arrest", "arrested", "jail", "prison", "imprison", "imprisonment", "warrant", "sheriff",
               "locked up", "detained", "detention"),
    }),
    CivilRule("civil-criminal", "a criminal record or prosecution", {
        "zh": ("刑事", "犯罪", "案底", "诈骗罪", "拒执罪", "恶意透支", "侦查"),
        "en": ("criminal", "crime", "prosecute", "prosecution", "prosecuted", "felony", "misdemeanor",
               "fraud charges", "charged with", "press charges"),
    }),
    CivilRule("civil-credit", "harm to the borrower's credit record", {
        "zh": ("上报征信", "上征信", "报征信", "征信黑名单", "征信污点", "征信受损", "影响征信", "影响您的征信",
               "影响你的征信", "黑名单"),
        "en": ("ruin your credit", "destroy your credit", "damage your credit", "hurt your credit",
               "wreck your credit", "blacklist", "blacklisted", "report you to credit", "report you to the credit"),
    }, in_ultimatum={
        "zh": ("征信", "信用记录", "信用报告", "信用评分", "信用分"),
        "en": ("credit report", "credit bureau", "credit reporting", "credit record", "credit file",
               "credit score", "credit rating", "credit history"),
    }),
    CivilRule("civil-contacts", "telling the borrower's family, employer or contacts", {
        "zh": ("通讯录", "紧急联系人", "你的联系人", "您的联系人", "家人", "家属", "亲友", "亲属", "父母", "配偶",
               "同事", "单位", "领导", "老板", "邻居", "朋友圈", "曝光", "公开你的", "公开您的", "上门"),
        "en": ("your employer", "your family", "your relatives", "your friends", "your contacts", "your neighbours",
               "your neighbors", "your colleagues", "your boss", "your workplace", "your place of work",
               "your spouse", "your parents", "your references", "your manager", "your hr"),
    }),
)
"""The threats the issue names (court, police, criminal record, credit, family or employer), by language."""

ULTIMATUM: dict[str, tuple[str, ...]] = {
    "zh": ("否则", "不然", "如不", "若不", "如果不", "要是不", "再不", "拒不", "如未", "若未", "如果未", "拒绝还款",
           "不还"),
    "en": ("otherwise", "or else", "unless", "if you do not", "if you don't", "if you fail", "if you refuse",
           "failure to pay", "failing payment", "or we will", "or you will", "or your"),
}
"""Words that make a sentence a condition on paying: a credit term next to them reads as a threat."""

LOCK_SCREEN_WORDS: dict[str, tuple[str, ...]] = {
    "zh": ("逾期", "欠款", "欠费", "还款", "借款", "贷款", "催收", "债", "待还", "金额", "¥", "￥", "元"),
    "en": ("overdue", "debt", "repay", "payment", "owe", "collection", "loan", "balance", "past due", "amount",
           "$", "¥"),
}
"""Words that would tell someone glancing at the borrower's phone that this is about a debt."""

OPT_OUT_WORDING: dict[str, tuple[str, ...]] = {
    "zh": ("退订",),
    "en": ("STOP",),
}
"""What an SMS must say so the borrower knows how to opt out (any one of these)."""


@lru_cache(maxsize=256)
def language_of(locale: str) -> str:
    """``zh-CN`` → ``zh``."""
    return locale.split("-", 1)[0].split("_", 1)[0].lower()
