"""The ledger: the record of runs, reminders, delivery attempts, rejects and suppressions."""
