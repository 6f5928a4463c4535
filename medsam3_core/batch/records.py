"""What a batch remembers about each case: the summary row, and the *done* record that makes a run resumable.

A case is done when its folder holds ``.medsam3-case.json``: the job that produced it and its summary row. The
record is written inside the case's staging folder before that folder is renamed into place (see
:mod:`medsam3_core.batch.runner`), so it appears in one atomic step together with the outputs it vouches for. A
killed run leaves either a complete case folder with its record, or no case folder (plus a hidden staging folder
that the next run removes), never outputs without a record or a record without outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from medsam3_core.batch.cases import Case
from medsam3_core.io.atomic import remove_path
from medsam3_core.io.export import to_jsonable

__all__ = [
    "DONE_RECORD",
    "STATUSES",
    "done_row",
    "failed_row",
    "not_run_row",
    "write_done_record",
    "read_done_row",
    "remove_leftovers",
    "staging_name",
]

DONE_RECORD = ".medsam3-case.json"
#: ``done``: segmented in this run; ``skipped``: done by an earlier run; ``failed``: an error, recorded;
#: ``not run``: not reached (the run stopped at an error or was cancelled).
STATUSES = ("done", "skipped", "failed", "not run")
_STAGING, _REPLACED = "partial", "old"


def _row(case: Case, status: str, seconds: Optional[float]) -> dict[str, Any]:
    return {"case": case.name, "status": status, "seconds": None if seconds is None else round(seconds, 3),
            "input": case.input, "series": case.series_uid, "output": str(case.output), "segments": [],
            "warnings": [], "error": None}


def done_row(case: Case, outcome: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The row of a case segmented now: per prompt its voxels, volume in mL and score, and every warning."""
    row = _row(case, "done", seconds)
    row["segments"] = [{"prompt": s.prompt, "label": s.label, "voxels": s.voxels, "volume_ml": s.volume_ml,
                        "score": s.score} for s in outcome["result"].segments]
    row["warnings"] = list(outcome["warnings"])
    return to_jsonable(row)


def failed_row(case: Case, error: str, seconds: float) -> dict[str, Any]:
    row = _row(case, "failed", seconds)
    row["error"] = error
    return row


def not_run_row(case: Case) -> dict[str, Any]:
    return _row(case, "not run", None)


def write_done_record(folder: Path, job: dict[str, Any], row: dict[str, Any]) -> None:
    """Record ``job`` and ``row`` in a case folder that is not yet visible (its staging folder)."""
    (folder / DONE_RECORD).write_text(json.dumps({"job": job, "row": row}, indent=1) + "\n", encoding="utf-8")


def read_done_row(case: Case, job: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The recorded row when ``case`` was finished with exactly ``job``; ``None`` when it still has to run."""
    try:
        record = json.loads((case.output / DONE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("job") != json.loads(json.dumps(job)):
        return None
    row = record.get("row")
    return row if isinstance(row, dict) else None


def staging_name(case: Case, kind: str, token: str) -> Path:
    """A hidden sibling of the case folder: ``.<name>.partial-<token>`` while written, ``.old-`` while replaced."""
    return case.output.parent / f".{case.output.name}.{kind}-{token}"


def remove_leftovers(cases: Sequence[Case]) -> int:
    """Remove the staging and replaced folders a killed run left for ``cases``; returns how many.

    Each parent folder is listed once, so this stays linear in the number of cases. Only folders named after these
    cases are touched: under torchrun the other ranks' cases are theirs to clean.
    """
    by_parent: dict[Path, set[str]] = {}
    for case in cases:
        by_parent.setdefault(case.output.parent, set()).add(case.output.name)
    removed = 0
    for parent, names in by_parent.items():
        try:
            entries = list(parent.iterdir())
        except OSError:
            continue  # the output root does not exist yet: nothing left over
        for entry in entries:
            if not entry.name.startswith(".") or "-" not in entry.name:
                continue
            stem, _, _ = entry.name[1:].rpartition("-")
            name, _, kind = stem.rpartition(".")
            if name in names and kind in (_STAGING, _REPLACED):
                remove_path(entry)
                removed += 1
    return removed
