"""``summary.csv`` and ``summary.json``: one row per case, in the order the cases were named.

The JSON keeps each case's segments as a list; the CSV spreads them into two columns per prompt (``<prompt> mL``
and ``<prompt> score``, prompts in order of first appearance), so a cohort opens as one table in a spreadsheet.
Both are written atomically and rebuilt by every run from this run's rows and the done records of earlier runs.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from medsam3_core.io.atomic import atomic_path

__all__ = ["write_summary", "count_statuses"]

_FIXED = ("case", "status", "seconds", "input", "series", "output")


def count_statuses(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(row["status"] for row in rows))


def write_summary(out_root: Path, rows: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.json`` into ``out_root``; returns their paths."""
    out_root.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_root / "summary.csv", out_root / "summary.json"
    with atomic_path(json_path) as tmp:
        data = {"counts": count_statuses(rows), "cases": list(rows)}
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    with atomic_path(csv_path) as tmp:
        tmp.write_text(_csv_text(rows), encoding="utf-8")
    return csv_path, json_path


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    prompts = list(dict.fromkeys(s["prompt"] for row in rows for s in row.get("segments", [])))
    columns = [*_FIXED, *(f"{p} {unit}" for p in prompts for unit in ("mL", "score")), "warnings", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        line = {key: row.get(key) for key in _FIXED}
        for s in row.get("segments", []):
            line[f"{s['prompt']} mL"], line[f"{s['prompt']} score"] = s["volume_ml"], s["score"]
        line["warnings"] = " | ".join(row.get("warnings") or [])
        line["error"] = row.get("error") or ""
        writer.writerow(line)
    return buffer.getvalue()
