"""The words of the ledger's states that people choose from: plain tuples, importable without the ledger.

The command line offers them as choices (``dispatcher handoffs close --outcome``, ``dispatcher retry --status``);
importing them from the modules that use them would load SQLAlchemy and the delivery stack for ``--help``.
"""

from __future__ import annotations

HANDOFF_STATUSES = ("open", "claimed", "closed")
"""A work item's status, in the only order it moves."""

HANDOFF_OUTCOMES = ("contacted", "promise_to_pay", "dispute", "wrong_number", "paid", "visit_done", "repayment_plan")
"""What an agent may record when closing a work item."""

RETRYABLE = ("failed", "unknown")
"""Attempt statuses an operator may retry."""

RETRY_LIMIT = 10_000
"""Attempts chosen at most by one ``dispatcher retry``."""
