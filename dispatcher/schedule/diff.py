"""What an edit of schedules.yaml changes: the reminders two versions plan for the same accounts at one moment.

Pure: it is handed both versions' decisions (made by the one planner, as ``dispatcher
plan`` makes them) and compares their reminders. A reminder is one channel of a due
step that goes out: now (its ``when`` is the moment planned for) or deferred to a
later run (``when`` is the earliest time it may go). Held-back fallbacks and
suppressed, paused or already-done channels are no reminders.

An account's reminders are paired channel by channel; those left over on both
sides are paired in order (a step that moved from SMS to email has *changed*);
the rest were *gained* or *lost*. Nothing personal is kept: account ids, step,
channel, template names and times.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from dispatcher.decisions import Decision, Verdict

GOING_OUT = (Verdict.SEND, Verdict.DEFER)
"""The verdicts of a channel that is a reminder: sent now, or by a later run."""


class Change(StrEnum):
    """How one reminder of an account differs between the old and the new version."""

    GAINED = "gained"
    LOST = "lost"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class Reminder:
    """One message (or hand-off) a version plans: which step, on which channel, with which template, when."""

    step: str
    channel: str
    template: str | None
    when: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "channel": self.channel, "template": self.template, "when": self.when}


@dataclass(frozen=True, slots=True)
class AccountChange:
    """A reminder an account gains, loses or gets changed: ``old`` is None when gained, ``new`` when lost."""

    account_id: str
    change: Change
    old: Reminder | None
    new: Reminder | None


def reminders(decision: Decision, at: datetime) -> tuple[Reminder, ...]:
    """The reminders of one account's decision planned at ``at``."""
    step = decision.step
    if step is None:
        return ()
    template = None if step.handoff is not None else step.template_for(decision.account_id)  # its variant, if any
    return tuple(Reminder(step.step, plan.channel.value, template,
                          at if plan.verdict is Verdict.SEND else plan.not_before)
                 for plan in decision.channels if plan.verdict in GOING_OUT)


def compare(account_id: str, old: Sequence[Reminder], new: Sequence[Reminder]) -> list[AccountChange]:
    """The changes between one account's old and new reminders (none when they are the same)."""
    old_left, new_left = list(old), list(new)
    changes: list[AccountChange] = []
    for before in list(old_left):
        after = next((r for r in new_left if r.channel == before.channel), None)
        if after is not None:
            old_left.remove(before)
            new_left.remove(after)
            if after != before:
                changes.append(AccountChange(account_id, Change.CHANGED, before, after))
    for before, after in zip(old_left, new_left, strict=False):
        changes.append(AccountChange(account_id, Change.CHANGED, before, after))
    paired = min(len(old_left), len(new_left))
    changes += [AccountChange(account_id, Change.LOST, r, None) for r in old_left[paired:]]
    changes += [AccountChange(account_id, Change.GAINED, None, r) for r in new_left[paired:]]
    return changes


def diff(old: Iterable[Decision], new: Iterable[Decision], at: datetime) -> Iterator[AccountChange]:
    """Every change from the ``old`` decisions to the ``new`` ones, in the order of the new ones.

    The old decisions are read first and only their reminders are kept; accounts the new decisions do not
    mention lose theirs at the end.
    """
    before: dict[str, list[Reminder]] = defaultdict(list)
    for decision in old:
        found = reminders(decision, at)
        if found:
            before[decision.account_id].extend(found)
    for decision in new:
        yield from compare(decision.account_id, before.pop(decision.account_id, ()), reminders(decision, at))
    for account_id, left in before.items():
        yield from compare(account_id, left, ())


@dataclass
class Tally:
    """Changes seen from one step's (or channel's) side: a reminder moving from it to another is lost to it."""

    gained: int = 0
    lost: int = 0
    changed: int = 0

    @property
    def net(self) -> int:
        """How many more reminders of it the new version plans."""
        return self.gained - self.lost

    def as_dict(self) -> dict[str, int]:
        return {"gained": self.gained, "lost": self.lost, "changed": self.changed, "net": self.net}


@dataclass
class Totals:
    """Counts of the changes: overall, and per step and per channel."""

    gained: int = 0
    lost: int = 0
    changed: int = 0
    by_step: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    by_channel: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))

    @classmethod
    def of(cls, changes: Iterable[AccountChange]) -> Totals:
        totals = cls()
        for change in changes:
            totals.add(change)
        return totals

    def add(self, change: AccountChange) -> None:
        if change.change is Change.GAINED:
            self.gained += 1
        elif change.change is Change.LOST:
            self.lost += 1
        else:
            self.changed += 1
        _count(self.by_step, change.old.step if change.old else None, change.new.step if change.new else None)
        _count(self.by_channel, change.old.channel if change.old else None,
               change.new.channel if change.new else None)

    def as_dict(self) -> dict[str, Any]:
        return {"by_step": {name: t.as_dict() for name, t in sorted(self.by_step.items())},
                "by_channel": {name: t.as_dict() for name, t in sorted(self.by_channel.items())},
                "gained": self.gained, "lost": self.lost, "changed": self.changed}

    def summary(self) -> str:
        """One line: ``+12 -40 ~3 reminders (gentle -40, firm +12; sms -20, push -8)``, largest moves first."""
        moves = [_moves(self.by_step), _moves(self.by_channel)]
        shown = "; ".join(m for m in moves if m)
        return f"+{self.gained} -{self.lost} ~{self.changed} reminders" + (f" ({shown})" if shown else "")


def _count(tallies: dict[str, Tally], old: str | None, new: str | None) -> None:
    """One change seen from each side: the same name on both is a change of it, else a loss and a gain."""
    if old is not None and old == new:
        tallies[old].changed += 1
        return
    if old is not None:
        tallies[old].lost += 1
    if new is not None:
        tallies[new].gained += 1


def _moves(tallies: dict[str, Tally]) -> str:
    ordered = sorted(tallies.items(), key=lambda item: (-abs(item[1].net), -item[1].changed, item[0]))
    return ", ".join(f"{name} {t.net:+d}" if t.net else f"{name} ~{t.changed}" for name, t in ordered)
