"""``python -m medsam3_core.server`` = ``medsam3 serve`` (useful where the console script is not on PATH)."""

import sys

from medsam3_core.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
