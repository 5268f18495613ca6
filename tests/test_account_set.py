"""The compact set of accounts a run read (dispatcher/ledger/seen.py): what a million-account run's daemon keeps."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

from dispatcher.ledger.seen import AccountSet, fingerprint


def test_holds_every_id_added_and_no_other() -> None:
    accounts = AccountSet()
    added = [f"ACC{n:07d}" for n in range(0, 20_000, 2)]
    accounts.update(added[:5000])
    for account_id in added[5000:]:
        accounts.add(account_id)
    assert all(a in accounts for a in added)
    assert not any(f"ACC{n:07d}" in accounts for n in range(1, 20_000, 2))
    assert "" not in accounts and 7 not in accounts
    assert len(accounts) == len(added)


def test_repeats_count_once_and_fingerprints_travel_between_sets() -> None:
    first, second = AccountSet(), AccountSet()
    first.update(["A1", "A2", "A1", "long id with spaces é"])
    second.update(["A3", "A2"])
    merged = AccountSet()
    merged.absorb(pickle.loads(pickle.dumps(first.fingerprints())))
    merged.absorb(second.fingerprints().tolist())  # as a range's JSON report carries them
    assert len(first.fingerprints()) == 3 and len(merged) == 4
    assert all(a in merged for a in ("A1", "A2", "A3", "long id with spaces é")) and "A4" not in merged
    merged.add("A4")  # added after it was asked: sorted again
    assert "A4" in merged and len(merged) == 5


def test_a_fingerprint_is_the_same_in_every_process() -> None:
    """Ranges planned in other processes (other hash seeds, other machines) report fingerprints the daemon checks."""
    code = "from dispatcher.ledger.seen import fingerprint; print(fingerprint('ACC0001234'), fingerprint('é'))"
    outputs = {tuple(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                    env={**os.environ, "PYTHONHASHSEED": seed}).stdout.split())
               for seed in ("1", "2")}
    assert outputs == {(str(fingerprint("ACC0001234")), str(fingerprint("é")))}
