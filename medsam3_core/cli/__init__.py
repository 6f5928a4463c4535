"""Command-line front-end: the ``medsam3`` console script (:mod:`medsam3_core.cli.main`) and its ``infer`` command
(:mod:`medsam3_core.cli.infer`). The other sub-commands live beside what they drive (``model.convert``,
``model.download``, ``server.cli``, ``viewer.cli``).
"""

from medsam3_core.cli.main import main

__all__ = ["main"]
