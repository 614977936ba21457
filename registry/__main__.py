"""`python -m registry ...` (see registry/cli.py)."""

import sys

from registry.cli import main

if __name__ == "__main__":
    sys.exit(main())
