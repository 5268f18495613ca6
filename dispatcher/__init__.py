"""Overdue-repayment reminder dispatcher."""

__version__ = "0.1.0"
