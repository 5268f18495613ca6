"""The flow of one run, a module per stage.

``source`` reads the lender's accounts in batches; ``history`` loads what the ledger knows about them;
``plan`` decides (pure: accounts, schedule, history and time in, decisions out); ``book`` turns decisions
into reminders, attempts and delivery jobs; ``deliver`` claims, re-checks, renders, sends and records;
``reconcile`` settles what a crash left in doubt; ``run`` drives one run through all of them.

Nothing is imported here: each stage is imported by its own name, so no stage drags in the others.
"""
