"""``python -m medsam3_core.volume infer INPUT PROMPT [PROMPT ...]``: the documented way to run ``infer`` without the
console script. The command itself lives in :mod:`medsam3_core.cli.infer`; this module only keeps the name stable for
scripts, the Slicer module and papers' methods sections that call it.
"""

import sys

from medsam3_core.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
