"""`python -m vidlab`: the `vidlab` command, for environments where its script is not on PATH."""

from __future__ import annotations

import sys

from vidlab.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
