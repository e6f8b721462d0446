"""``python -m trtserve_client`` is the ``trtserve`` command."""
import sys

from .cli import main

sys.exit(main())
