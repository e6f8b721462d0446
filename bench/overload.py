"""`make overload`: 2x the measured capacity against the bounded-queue server; 0 lost requests.

The benchmark lives in :mod:`loadtest.overload` (importable by the tests); this is its front
door. ``python -m bench.overload --help`` lists the options.
"""
import sys

from loadtest.overload import main

if __name__ == "__main__":
    sys.exit(main())
