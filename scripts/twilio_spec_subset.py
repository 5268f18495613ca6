#!/usr/bin/env python3
"""Cut the operations the tests check out of Twilio's OpenAPI description (``../shared/specs/twilio_api_v2010.json``).

    python3 scripts/twilio_spec_subset.py [SPEC]     writes tests/standins/twilio_api_v2010_subset.json

The stand-ins validate requests against the subset, so the test suite runs where the whole
description is not beside the repository (a CI clone); ``tests/test_voice.py`` checks the subset
against the whole description when that is present.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from standins.openapi_form import SUBSET, subset  # noqa: E402  (test support, beside the stand-ins)


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "specs" / "twilio_api_v2010.json"
    SUBSET.write_text(json.dumps(subset(json.loads(path.read_text(encoding="utf-8"))), indent=1, sort_keys=True)
                      + "\n", encoding="utf-8")
    print(f"{SUBSET.relative_to(ROOT)}: {SUBSET.stat().st_size} bytes from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
