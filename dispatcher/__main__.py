"""``python -m dispatcher``."""

import sys

from dispatcher.cli import main

if __name__ == "__main__":  # not when a spawned process of a run imports it
    sys.exit(main())
