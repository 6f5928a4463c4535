"""The error for training data with problems: one line per problem, all of them at once.

A dataset of hundreds of cases that fails on its first missing file, and then on the next one after every fix, wastes
an afternoon; so checks collect every problem they can find and raise them together.
"""

from __future__ import annotations

from medsam3_core.errors import InputError

__all__ = ["DataProblems"]


class DataProblems(InputError):
    """Problems found in the training data; ``problems`` holds one line each (``str()`` joins them)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
