"""The batch loop: each case read ahead on a background thread, segmented with the one loaded model, written into a
hidden staging folder, recorded, and renamed into place.

Why a staging folder and a rename rather than writing into ``OUT/<case>/`` directly: a case has several files
(label map, report, masks, DICOM SEG, overlays) and its done record. Renaming the finished folder is one atomic
step, so an interrupted case leaves no folder that looks finished, and a kill (even ``SIGKILL``) loses at most the
case in flight. Cancellation (Ctrl-C, SIGTERM, SIGHUP through the :class:`CancelToken`) takes effect within one
batch of slices of the case in flight; its staging folder is removed and the run stops.

Reading the next case overlaps with segmenting the current one: one read-ahead, so at most two volumes are in
memory. The reader thread spends most of its time in SimpleITK, pydicom and zlib, which release the GIL.
"""

from __future__ import annotations

import os
import time
import traceback
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from medsam3_core.batch.cases import Case
from medsam3_core.batch.display import BatchDisplay
from medsam3_core.batch.recipe import CaseRecipe
from medsam3_core.batch.records import (
    done_row,
    failed_row,
    read_done_row,
    remove_leftovers,
    staging_name,
    write_done_record,
)
from medsam3_core.cli.segment_case import segment_and_write
from medsam3_core.errors import Cancelled, MedSam3Error
from medsam3_core.io.atomic import remove_path
from medsam3_core.io.geometry import Volume
from medsam3_core.progress import CancelToken
from medsam3_core.prompts import PromptResolution, resolve_prompts
from medsam3_core.segmenter import Segmenter

__all__ = ["ShardOutcome", "find_pending", "run_cases"]


@dataclass
class ShardOutcome:
    """What one rank did: a row per case it attempted, and whether it stopped early (error or cancel)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    stopped_by_error: bool = False
    cancelled: bool = False


def find_pending(cases: Sequence[Case], recipe: CaseRecipe, overwrite: bool) -> tuple[list[Case], dict[str, Any]]:
    """Split the cases into those to run and the rows of those already done with the same job.

    Leftovers of killed runs (hidden staging folders) of the pending cases are removed here, before any rank
    starts writing.
    """
    pending, skipped = [], {}
    for case in cases:
        row = None if overwrite else read_done_row(case, recipe.job(case))
        if row is None:
            pending.append(case)
        else:
            skipped[case.name] = {**row, "status": "skipped"}
    remove_leftovers(pending)
    return pending, skipped


def _read(case: Case, recipe: CaseRecipe, cancel: CancelToken) -> tuple[Volume, float]:
    from medsam3_core.segmenters.opening import open_input

    t0 = time.perf_counter()
    volume = open_input(case.input, series_uid=case.series_uid, modality=case.modality or recipe.modality,
                        frame=recipe.frame, cancel=cancel)
    return volume, time.perf_counter() - t0


def run_cases(
    cases: Sequence[Case],
    segmenter: Segmenter,
    recipe: CaseRecipe,
    *,
    display: BatchDisplay,
    cancel: CancelToken,
    continue_on_error: bool = False,
) -> ShardOutcome:
    """Segment and write ``cases`` in order; a failing case is recorded and ends the run unless
    ``continue_on_error``. Errors that are not :class:`MedSam3Error` (bugs) also print their traceback."""
    outcome = ShardOutcome()
    resolved: dict[tuple[str, ...], list[PromptResolution]] = {}
    display.start(len(cases))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsam3-read") as reader:
        upcoming: Optional[Future] = reader.submit(_read, cases[0], recipe, cancel) if cases else None
        for index, case in enumerate(cases):
            current = upcoming
            upcoming = reader.submit(_read, cases[index + 1], recipe, cancel) if index + 1 < len(cases) else None
            if cancel.cancelled:
                outcome.cancelled = True
                break
            display.case_started(case, index, len(cases))
            t0 = time.perf_counter()
            try:
                volume, read_seconds = current.result()
                if case.prompts not in resolved:
                    resolved[case.prompts] = resolve_prompts(case.prompts, recipe.synonyms)
                row = _segment_case(case, volume, read_seconds, resolved[case.prompts], segmenter, recipe,
                                    display, cancel, t0)
            except (Cancelled, KeyboardInterrupt):
                cancel.cancel()
                outcome.cancelled = True
                break
            except MedSam3Error as err:
                row = failed_row(case, str(err), time.perf_counter() - t0)
            except Exception as err:  # a bug: keep its traceback, and let the other cases run if asked to
                traceback.print_exc()
                row = failed_row(case, f"{type(err).__name__}: {err}", time.perf_counter() - t0)
            outcome.rows.append(row)
            display.case_finished(row)
            if row["status"] == "failed" and not continue_on_error:
                outcome.stopped_by_error = True
                break
        if upcoming is not None:
            upcoming.cancel()
    display.close()
    return outcome


def _segment_case(
    case: Case,
    volume: Volume,
    read_seconds: float,
    resolutions: list[PromptResolution],
    segmenter: Segmenter,
    recipe: CaseRecipe,
    display: BatchDisplay,
    cancel: CancelToken,
    t0: float,
) -> dict[str, Any]:
    """Segment one case into its staging folder, record it, and move it into place; returns its row."""
    token = uuid.uuid4().hex[:8]
    staging = staging_name(case, "partial", token)
    plan = recipe.plan(staging)
    plan.check_input(volume)
    try:
        result = segment_and_write(segmenter, volume, resolutions, recipe.options_for(case), plan,
                                   input_text=case.input, read_seconds=read_seconds, progress=display.progress,
                                   cancel=cancel)
        row = done_row(case, result, time.perf_counter() - t0)
        write_done_record(staging, recipe.job(case), row)
        cancel.raise_if_cancelled()
        _move_into_place(case, staging, token)
    except BaseException:
        remove_path(staging)
        raise
    return row


def _move_into_place(case: Case, staging: Path, token: str) -> None:
    """Replace the case folder by ``staging``: the old folder is moved aside first and deleted last, so a kill in
    between leaves no case folder (the case reruns) rather than a mix of two runs."""
    replaced = None
    if os.path.lexists(case.output):
        replaced = staging_name(case, "old", token)
        os.replace(case.output, replaced)
    os.replace(staging, case.output)
    if replaced is not None:
        remove_path(replaced)
