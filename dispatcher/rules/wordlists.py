"""Phrases reminders must never contain, and words that must not show on a lock screen.

Matching is case-insensitive substring matching on the rendered text. The
lists are starting points for a Chinese internet lender with some English-speaking
borrowers; ``compliance.blocklist`` in schedules.yaml adds phrases per locale.
"""

from __future__ import annotations

CIVIL_BLOCKLIST: dict[str, tuple[str, ...]] = {
    "zh": (
        # exposing the debt to third parties (GB/T 45251-2025, NIFA convention)
        "通讯录", "紧急联系人", "你的联系人", "您的联系人", "你的家人", "您的家人", "你的亲友", "您的亲友",
        "你的同事", "您的同事", "你的单位", "您的单位", "你的领导", "公司领导", "曝光", "公开你的", "公开您的",
        "上门催收", "上门拜访",
        # impersonating police or courts, threatening unlawful action
        "公安", "警察", "警方", "派出所", "法院传票", "拘留", "逮捕", "坐牢", "判刑", "刑事责任", "立案侦查",
        "冻结你的", "冻结您的",
        # threats and insults (China credit-card rules art. 68)
        "后果自负", "走着瞧", "老赖", "骗子", "无赖", "不要脸", "人渣", "去死", "你全家", "黑名单",
    ),
    "en": (
        # third parties
        "your employer", "your family", "your relatives", "your friends", "your contacts", "your neighbours",
        "your neighbors", "your colleagues", "your boss", "your workplace",
        # police, courts and unlawful action
        "police", "arrest", "jail", "prison", "criminal", "warrant", "sheriff", "court summons",
        "garnish", "seize your", "we will sue",
        # threats and insults
        "or else", "you will regret", "deadbeat", "scammer", "loser", "shame on you", "public record of your",
    ),
}
"""Threats, insults, impersonation of authorities and exposure to others, by language."""

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


def language_of(locale: str) -> str:
    """``zh-CN`` → ``zh``."""
    return locale.split("-", 1)[0].split("_", 1)[0].lower()
