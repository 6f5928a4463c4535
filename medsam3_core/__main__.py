"""``python -m medsam3_core`` is the ``medsam3`` console script."""

import sys

from .cli import main

sys.exit(main())
