"""An argument parser whose errors are as short as every other user error of the CLI.

argparse prints the whole usage (about ten wrapped lines for ``infer``) before its message. A mistyped option should
read like the CLI's other user errors: the error on one line, then where to find the options; exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = ["OneLineErrorParser"]


class OneLineErrorParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` printing ``<prog>: error: <message>`` and a ``--help`` hint (two lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\nRun '{self.prog} --help' for the options.\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        sys.exit(status)
