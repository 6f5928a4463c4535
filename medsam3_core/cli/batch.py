"""``medsam3 batch INPUT [INPUT ...] -p PROMPT [PROMPT ...] -o OUT`` — segment many scans with the model loaded once.

Inputs are image files, folders (every NIfTI/NRRD/MHA file and every DICOM series in them) and CSV/JSONL manifests
(:mod:`medsam3_core.batch.cases`). Each case is written to ``OUT/<case>/`` exactly as ``infer`` writes one scan,
and ``OUT/summary.csv`` / ``summary.json`` list every case. The options are those of ``infer``.

The run is resumable: a case counts as done once its folder and its done record were moved into place in one step,
so rerunning the same command skips finished cases (``--overwrite`` redoes them) and a killed run loses at most
the case in flight. Under ``torchrun`` the cases are shared out over the ranks (:mod:`medsam3_core.batch`).

Exit codes: 0 every case done; 2 a user error before any case ran (one line on stderr, nothing written) or a case
failed (without ``--continue-on-error`` the run stops there; the summary says which); 3 cancelled by Ctrl-C,
SIGTERM or SIGHUP (the case in flight is not written; rerun to continue).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from medsam3_core.batch.cases import collect_cases
from medsam3_core.batch.display import BatchDisplay, emit
from medsam3_core.batch.distributed import Ranks, join, shard
from medsam3_core.batch.recipe import CaseRecipe
from medsam3_core.batch.records import not_run_row
from medsam3_core.batch.runner import find_pending, run_cases
from medsam3_core.batch.summary import count_statuses, write_summary
from medsam3_core.cli.infer import EXIT_CANCELLED, EXIT_OK, EXIT_USER_ERROR
from medsam3_core.cli.options import add_common_arguments, progress_style
from medsam3_core.errors import Cancelled, InputError, MedSam3Error
from medsam3_core.progress import CancelToken
from medsam3_core.signals import cancel_on_signals

__all__ = ["add_arguments", "run", "main"]

EXAMPLES = """examples:
  medsam3 batch scans/ -p kidney liver -o out/                 every NIfTI/NRRD/MHA file in scans/ is a case
  medsam3 batch dicom_tree/ -p liver -o out/ --dicom-seg seg.dcm  every DICOM series is a case, with a DICOM SEG
  medsam3 batch cases.csv -o out/ --continue-on-error          one case per row: input;prompts;output;modality;window
  medsam3 batch scans/ -p kidney -o out/                       run again: finished cases are skipped
  torchrun --nproc_per_node=4 -m medsam3_core.batch scans/ -p kidney -o out/   one GPU per rank
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``batch`` (``medsam3 batch`` and ``python -m medsam3_core.batch``)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders of images or DICOM series, 'demo', or .csv/.jsonl manifests")
    parser.add_argument("-p", "--prompts", nargs="+", metavar="PROMPT", default=[],
                        help="concepts to segment in every case (a manifest's 'prompts' column overrides them)")
    parser.add_argument("-o", "--output", required=True, help="output root: one folder per case and the summary")
    parser.add_argument("--overwrite", action="store_true", help="redo cases that are already done")
    parser.add_argument("--continue-on-error", action="store_true",
                        help="record a failing case in the summary and go on (default: stop at the first error)")
    add_common_arguments(parser, per_case=True)


def run(args: argparse.Namespace) -> int:
    """Run ``batch``; returns the process exit code (never raises for user errors)."""
    style = progress_style(args)
    ranks = Ranks()
    # Ctrl-C, SIGTERM (torchrun, schedulers) and SIGHUP (a closed terminal) cancel the run at the next batch of
    # slices; a second signal aborts at once
    with cancel_on_signals() as signals:
        try:
            recipe = CaseRecipe.from_args(args)
            ranks, device = join(args.device)
            code, message, summary = _run(args, recipe, ranks, device, style, signals.token)
        except (Cancelled, KeyboardInterrupt):
            code, message, summary = EXIT_CANCELLED, "Interrupted before any case ran; nothing was written.", None
        except MedSam3Error as err:
            code, message, summary = EXIT_USER_ERROR, str(err), None
    ranks.leave()
    if ranks.is_main:
        _report(args, style, code, message, summary)
    return code


def _run(
    args: argparse.Namespace, recipe: CaseRecipe, ranks: Ranks, device: str, style: str, cancel: CancelToken
) -> tuple[int, str, Optional[dict[str, Any]]]:
    out_root = Path(args.output).expanduser().resolve()
    found = _plan_on_rank0(args, recipe, out_root) if ranks.is_main else None
    cases, pending_names, skipped, error = ranks.broadcast(found)
    if error is not None:
        raise InputError(error)
    pending = [case for case in cases if case.name in pending_names]
    mine = shard(pending, ranks)
    if ranks.is_main and style == "bar":
        where = f" over {ranks.world} ranks" if ranks.distributed else ""
        print(f"{len(cases)} cases: {len(skipped)} already done, {len(pending)} to run{where}", file=sys.stderr)

    segmenter, error = None, None
    if mine:
        from medsam3_core.segmenters.opening import open_segmenter

        try:
            segmenter = open_segmenter(args.model, device, args.server, args.api_key)
        except MedSam3Error as err:
            error = str(err)
    errors = [e for e in ranks.gather(error) if e is not None]
    if errors:
        raise MedSam3Error(errors[0])

    outcome = run_cases(mine, segmenter, recipe, display=BatchDisplay(style, ranks), cancel=cancel,
                        continue_on_error=args.continue_on_error)
    if outcome.cancelled:  # under torchrun the other ranks are stopped by torchrun itself: no collective here
        rows = {row["case"]: row for row in outcome.rows}
        done = sum(row["status"] == "done" for row in outcome.rows)
        summary = None if ranks.distributed else _summary(out_root, cases, {**skipped, **rows})
        return EXIT_CANCELLED, (f"Cancelled: {done} case(s) finished in this run, the case in flight was not "
                                "written. Run the same command again to continue."), summary
    rows = {row["case"]: row for shard_rows in ranks.gather(outcome.rows) for row in shard_rows}
    summary = _summary(out_root, cases, {**skipped, **rows}) if ranks.is_main else None
    failed = [row for row in rows.values() if row["status"] == "failed"]
    if not failed:
        return EXIT_OK, "", summary
    first = failed[0]
    if not args.continue_on_error:
        return EXIT_USER_ERROR, (f"case {first['case']!r}: {first['error']} (stopped there; fix it and run again, "
                                 "or pass --continue-on-error)"), summary
    return EXIT_USER_ERROR, (f"{len(failed)} of {len(cases)} cases failed, the first {first['case']!r}: "
                             f"{first['error']}; see {out_root / 'summary.csv'}"), summary


def _plan_on_rank0(args: argparse.Namespace, recipe: CaseRecipe, out_root: Path) -> tuple:
    """``(cases, names to run, rows of done cases, error)``, decided once so every rank shares the same list."""
    from medsam3_core.prompts import resolve_prompts

    try:
        cases = collect_cases(args.inputs, args.prompts, out_root)
        for prompts in dict.fromkeys(case.prompts for case in cases):
            resolve_prompts(prompts, args.synonyms)  # an empty prompt or a bad synonym table fails now, not per case
        pending, skipped = find_pending(cases, recipe, args.overwrite)
    except MedSam3Error as err:
        return None, None, None, str(err)
    return cases, {case.name for case in pending}, skipped, None


def _summary(out_root: Path, cases: Sequence, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ordered = [rows.get(case.name) or not_run_row(case) for case in cases]
    csv_path, json_path = write_summary(out_root, ordered)
    return {"csv": csv_path, "json": json_path, "counts": count_statuses(ordered)}


def _report(args: argparse.Namespace, style: str, code: int, message: str, summary: Optional[dict]) -> None:
    if style == "json":
        if code == EXIT_OK:
            emit({"event": "done", "summary": str(summary["csv"]), "counts": summary["counts"]})
        else:
            emit({"event": "cancelled" if code == EXIT_CANCELLED else "error", "message": message,
                  **({"summary": str(summary["csv"]), "counts": summary["counts"]} if summary else {})})
    if code == EXIT_OK and not args.quiet and style != "json":
        counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items())
        print(f"{sum(summary['counts'].values())} cases: {counts}; summary in {summary['csv']}")
    if code != EXIT_OK:
        print(f"error: {message}" if code == EXIT_USER_ERROR else message, file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsam3_core.batch", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
