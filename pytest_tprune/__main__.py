"""``python -m pytest_tprune`` runs the same command line as ``tprune``."""

from __future__ import annotations

import sys

from pytest_tprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
