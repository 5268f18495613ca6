"""Borrowers' replies: what a reply means (opt-out, opt-in, unclear), and a spool for when the ledger is locked."""
