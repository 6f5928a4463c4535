"""``medsam3`` console script: one entry point, one sub-command per task.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; only the module
of the chosen sub-command is imported, so ``medsam3 --help`` stays fast and an optional extra that is not installed
(server, GUI) only matters when its sub-command is used.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from medsam3_core.cli.parsing import OneLineErrorParser

__all__ = ["SUBCOMMANDS", "main"]

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "infer": ("medsam3_core.cli.infer", "segment a scan or image by text prompts"),
    "batch": ("medsam3_core.cli.batch", "segment many scans with the model loaded once (resumable, torchrun-ready)"),
    "serve": ("medsam3_core.server.cli", "run the remote inference server"),
    "convert": ("medsam3_core.model.convert", "convert a native SAM3 / Medical SAM3 .pt checkpoint to a model folder"),
    "download": ("medsam3_core.model.download", "download and convert released weights into the cache"),
    "view": ("medsam3_core.viewer.cli", "open the standalone viewer"),
}


def _top_parser() -> argparse.ArgumentParser:
    from medsam3_core import __version__

    parser = OneLineErrorParser(
        prog="medsam3",
        description="Medical SAM3: text-prompted segmentation of medical images and volumes.",
        epilog="Run 'medsam3 COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"medsam3 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        print(f"error: 'medsam3 {name}' needs an optional dependency that is not installed ({err.name}); "
              f"install it with: pip install 'medsam3[all]'", file=sys.stderr)
        return 2
    parser = OneLineErrorParser(prog=f"medsam3 {name}", description=help_text)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
