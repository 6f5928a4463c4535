"""``python -m medsam3_core`` is the ``medsam3`` console script."""

import sys

from medsam3_core.cli.main import main

sys.exit(main())
