"""``python -m trtserve_build``: the same as ``trtserve-build``."""
import sys

from .cli import main

sys.exit(main())
