"""``python -m medsam3_core.batch`` (and ``torchrun … -m medsam3_core.batch``) is ``medsam3 batch``."""

import sys

from medsam3_core.cli.batch import main

sys.exit(main())
