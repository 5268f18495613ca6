"""The "message" of a hand-off: the work item's facts, for :class:`~dispatcher.channels.handoff.HandoffChannel`.

A ``handoff:`` step has no templates. :class:`HandoffComposer` renders its reminders
as the work item's fields (queue, priority, kind, the step and the borrower's masked
number) in ``Rendered.data``, with no text, so delivery claims, re-checks and
records a hand-off exactly as it does a message. Every other channel renders from
templates as before.
"""

from __future__ import annotations

import hashlib
import json

from dispatcher.channel_kind import ChannelKind
from dispatcher.compose.renderer import Composer, RenderContext, Rendered
from dispatcher.errors import TemplateError
from dispatcher.masking import address_hash, mask_phone
from dispatcher.pipeline.history import borrower_key

HANDOFF_TEMPLATE = "handoff"
"""What the ledger records as the template of a hand-off attempt."""

HANDOFF_FORMAT = "1"
"""The version of the work item's fields (recorded as the template version)."""


def work_item_data(ctx: RenderContext) -> dict[str, str]:
    """The fields of the work item ``ctx``'s reminder opens; raises TemplateError when the step does not hand off."""
    handoff = ctx.step.handoff
    if handoff is None:
        raise TemplateError(f"step {ctx.step.step!r} no longer hands off to people")
    account = ctx.account
    data = {"queue": handoff.queue, "priority": str(handoff.priority), "kind": handoff.kind, "step": ctx.step.step,
            "occurrence": str(ctx.occurrence), "days_overdue": str(ctx.days_overdue),
            "due_date": account.due_date.isoformat()}
    if account.phone:
        data |= {"phone": mask_phone(account.phone), "phone_hash": address_hash(account.phone)}
    key = borrower_key(account)
    if key:
        data["borrower_hash"] = key
    return data


class HandoffComposer(Composer):
    """A :class:`Composer` that also renders hand-offs (as work item fields, no templates)."""

    def render_in(self, ctx: RenderContext, channel: ChannelKind, locale: str) -> Rendered:
        if ChannelKind(channel) is not ChannelKind.HANDOFF:
            return super().render_in(ctx, channel, locale)
        data = work_item_data(ctx)
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        return Rendered(channel=ChannelKind.HANDOFF, locale=locale, template=HANDOFF_TEMPLATE,
                        template_version=HANDOFF_FORMAT, body="", subject=None, html=None, title=None, data=data,
                        content_hash=digest)
