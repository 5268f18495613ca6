"""The kinds of channel a ladder step uses: a domain type of its own.

Planning, the rules, rendering and the ledger name channels by this enum; they
import it from here, not from the channels package, which holds the providers.
"""

from __future__ import annotations

from enum import StrEnum


class ChannelKind(StrEnum):
    """The kinds of channel a ladder step can use."""

    SMS = "sms"
    EMAIL = "email"
    PUSH = "push"
    VOICE = "voice"
    """A phone call to the borrower's number (Twilio Programmable Voice): the ``voice`` templates, spoken."""
    HANDOFF = "handoff"
    """Not a message: a work item for people (a step's ``handoff:``), kept in the ledger's ``handoffs`` table.
    Its address is the account id; it is claimed, re-checked and recorded like any channel."""
