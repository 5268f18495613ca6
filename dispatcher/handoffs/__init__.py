"""Work handed to people: field visits (the collector's claim and authorisation letter) and repayment plans.

The work items themselves, their events and outcomes are ledger rows (:mod:`dispatcher.ledger.handoffs`);
the hand-off channel that creates them is :mod:`dispatcher.channels.handoff`.
"""
