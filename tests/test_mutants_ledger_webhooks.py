"""Tests that kill mutants of the ledger's claim and finish code and of the Twilio webhook handlers."""
