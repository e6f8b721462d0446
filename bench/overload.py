"""`make overload`: 2x the measured capacity against the bounded-queue server; 0 lost requests.

The benchmark lives in :mod:`loadtest.overload` (importable by the tests); this is its front
door. ``python bench/overload.py --help`` lists the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.overload import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
