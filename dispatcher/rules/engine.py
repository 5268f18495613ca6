"""The compliance engine: run when a reminder is planned and again just before it is sent.

A rule either lets a reminder through or returns a :class:`~dispatcher.rules.base.Block`
naming its rule id, whether it defers (try again later) or suppresses (never for this
occurrence), and why. Rule ids: ``pause``, ``opt-out``, ``bad-address``, ``window``,
``holiday``, ``call-cap``, ``cap`` here; ``paid``, ``civil``, ``content``, ``third-party`` at send time
(:mod:`dispatcher.send_check`); ``no_address`` and ``superseded`` in the planner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.pipeline.history import BatchHistory
from dispatcher.rules.base import AccountRule, Block, ChannelRule, HistoryRule
from dispatcher.rules.call_cap import CallCapRule
from dispatcher.rules.cap import CapRule
from dispatcher.rules.opt_out import OptOutRule
from dispatcher.rules.pause import HandoffPauseRule, PauseRule
from dispatcher.rules.policy import Policy
from dispatcher.rules.window import HolidayRule, Holidays, WindowRule
from dispatcher.schedule.models import Schedule


@dataclass(frozen=True)
class RuleEngine:
    """Runs the account rules, then the channel rules, in order; the first refusal wins."""

    account_rules: Sequence[AccountRule]
    channel_rules: Sequence[ChannelRule]
    recheck_rules: Sequence[ChannelRule] = ()
    """The channel rules run again just before sending (not caps: the claim already counts)."""
    history_rules: Sequence[HistoryRule] = ()
    """Account rules that read the ledger's history (pauses agreed at a hand-off), after ``account_rules``."""

    def check_account(self, account: Account, today: date, history: BatchHistory | None = None) -> Block | None:
        for rule in self.account_rules:
            block = rule.check(account, today)
            if block is not None:
                return block
        return self._check_history(account, today, history) if history is not None else None

    def _check_history(self, account: Account, today: date, history: BatchHistory) -> Block | None:
        for rule in self.history_rules:
            block = rule.check(account, today, history)
            if block is not None:
                return block
        return None

    def recheck_channel(self, account: Account, channel: ChannelKind, address: str, now: datetime,
                        history: BatchHistory, *, all_rules: bool = False) -> Block | None:
        """The send-time re-check; ``all_rules`` (a fallback channel never planned) runs caps too."""
        for rule in self.channel_rules if all_rules else self.recheck_rules:
            block = rule.check(account, channel, address, now, history)
            if block is not None:
                return block
        return None

    def check_channel(self, account: Account, channel: ChannelKind, address: str, now: datetime,
                      history: BatchHistory) -> Block | None:
        for rule in self.channel_rules:
            block = rule.check(account, channel, address, now, history)
            if block is not None:
                return block
        return None


def build_engine(schedule: Schedule, policy: Policy) -> RuleEngine:
    """The rules of ``policy``, in the order they are checked: stops before deferrals."""
    opt_out = OptOutRule()
    holidays = Holidays(policy.holidays, policy.region)
    window = WindowRule(policy.window, schedule.timezone, holidays)
    holiday = HolidayRule(holidays, policy.window, schedule.timezone)
    return RuleEngine(
        account_rules=[PauseRule()],
        channel_rules=[opt_out, window, holiday,
                       *([CallCapRule(policy.call_limits)] if policy.call_limits else []),  # calls: before ``cap``
                       CapRule(policy.caps, policy.per_debt)],
        recheck_rules=[opt_out, window, holiday],
        history_rules=[HandoffPauseRule()],
    )
