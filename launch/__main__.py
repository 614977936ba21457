"""`python launch submit --suite NAME ...` from the repo root."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python launch`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
