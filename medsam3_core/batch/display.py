"""Progress of a batch: a bar over the cases showing the current case and its stage, or JSON lines for programs.

The bar is tqdm on stderr (one per rank under torchrun, each on its own line). ``--progress json`` prints the same
protocol ``infer`` prints, with the case added: ``{"event": "case", "case": …, "index": …, "total": …}`` when a case
starts, ``{"event": "progress", "case": …, "stage": …, "fraction": …}`` while it runs, ``{"event": "case_done",
…summary row…}`` when it ends, and one ``{"event": "done", …}`` at the end (``"rank"`` is added under torchrun).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional

from medsam3_core.batch.cases import Case
from medsam3_core.batch.distributed import Ranks
__all__ = ["BatchDisplay", "emit"]

_REFRESH_S = 0.1  # stage updates arrive per batch of slices; redrawing the bar more often only costs time


def emit(event: dict[str, Any]) -> None:
    """One JSON line on stdout, in a single write: torchrun starts its ranks unbuffered (``python -u``) on one
    shared stdout, where ``print`` would write the line and its newline separately and ranks' lines could mix."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class BatchDisplay:
    """Receives the batch's events; ``style`` is ``bar``, ``json`` or ``none``."""

    def __init__(self, style: str, ranks: Ranks = Ranks()) -> None:
        self.style = style
        self.ranks = ranks
        self._bar: Any = None
        self._case: Optional[Case] = None
        self._drawn = 0.0

    def _emit(self, event: dict[str, Any]) -> None:
        if self.ranks.distributed:
            event = {**event, "rank": self.ranks.rank}
        emit(event)

    def start(self, total: int) -> None:
        """``total`` cases will run on this rank."""
        if self.style == "bar" and total:
            from tqdm import tqdm

            desc = f"rank {self.ranks.rank}" if self.ranks.distributed else "cases"
            self._bar = tqdm(total=total, desc=desc, unit="case", file=sys.stderr, position=self.ranks.local_rank,
                             dynamic_ncols=True)

    def case_started(self, case: Case, index: int, total: int) -> None:
        self._case = case
        if self.style == "json":
            self._emit({"event": "case", "case": case.name, "index": index, "total": total})
        self._show("read", 0.0, force=True)

    def progress(self, stage: str, fraction: float) -> None:
        """The :data:`~medsam3_core.progress.ProgressCallback` of the case in flight."""
        if self.style == "json" and self._case is not None:
            self._emit({"event": "progress", "case": self._case.name, "stage": stage, "fraction": round(fraction, 4)})
        self._show(stage, fraction)

    def case_finished(self, row: dict[str, Any]) -> None:
        self._case = None
        if self.style == "json":
            self._emit({"event": "case_done", **row})
        elif self._bar is not None:
            self._bar.update(1)

    def _show(self, stage: str, fraction: float, force: bool = False) -> None:
        if self._bar is None or self._case is None:
            return
        now = time.monotonic()
        if force or now - self._drawn >= _REFRESH_S:
            self._drawn = now
            self._bar.set_postfix_str(f"{self._case.name}: {stage} {fraction:4.0%}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
