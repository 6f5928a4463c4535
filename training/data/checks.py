"""Check the training data before a run starts: every file readable, every label declared, enough cases to split.

Why before: a training run reads its cases lazily and for hours. A missing label file, a corrupt image or a label
value that ``dataset.json`` does not declare otherwise either stops the run late with a traceback or, worse, trains
silently on wrong targets (an undeclared label value is simply never asked for). :func:`check_data` reads every case
of every source once and returns *all* problems, one line each; ``python -m training.run --check-data`` prints them
without training, and :class:`~training.engine.trainer.Trainer` refuses to start while there are any.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from medsam3_core.errors import InputError

from training.config import DataConfig, SourceConfig
from training.data.problems import DataProblems
from training.data.samples import Case
from training.data.sources import cases_for

__all__ = ["check_data", "check_source", "check_case"]


def check_data(cfg: DataConfig, on_case: Optional[Callable[[str, str], None]] = None) -> list[str]:
    """Problems of every configured source, one line each (empty: the data is usable).

    ``on_case(source, case_id)`` is called before each case is read (for progress output on large datasets).
    """
    return [line for src in cfg.sources for line in check_source(src, cfg.val_fraction, on_case)]


def check_source(src: SourceConfig, val_fraction: float,
                 on_case: Optional[Callable[[str, str], None]] = None) -> list[str]:
    name = src.name or src.kind
    try:
        cases = cases_for(src)
    except DataProblems as err:
        return [f"{name}: {line}" for line in err.problems]
    except InputError as err:
        return [f"{name}: {err}"]
    problems = []
    ids = {c.case_id for c in cases}
    if val_fraction > 0 and len(ids) < 2:
        problems.append(f"{name}: {len(ids)} case, but splitting into training and validation needs at least 2; "
                        "add cases or set data.val_fraction=0")
    for case in cases:
        if on_case is not None:
            on_case(name, case.case_id)
        problems.extend(f"{name}/{case.case_id}: {p}" for p in check_case(case))
    return problems


def check_case(case: Case) -> list[str]:
    """What is wrong with one case: unreadable files, channels, grid mismatch, undeclared label values."""
    try:
        volume, labels = case.load()
    except InputError as err:
        return [str(err)]
    except (OSError, ValueError, RuntimeError, EOFError) as err:  # a reader library's own failure on a damaged file
        return [f"cannot be read ({type(err).__name__}: {err})"]
    problems = []
    if volume.array.ndim != 3 and not volume.is_rgb:
        problems.append(f"the image has {volume.array.shape[-1]} channels per voxel; training reads one grey (or RGB) "
                        "image, so keep one channel per file (nnU-Net: one _000N file per channel)")
    elif labels.shape[:3] != volume.shape:
        problems.append(f"the label map's grid {labels.shape} differs from the image's {volume.shape}")
    values = {int(v) for v in np.unique(labels)}
    undeclared = sorted(values - set(case.concepts) - {0})
    if undeclared:
        problems.append(f"label value(s) {undeclared} are not declared (declared: {sorted(case.concepts)}); "
                        "add them to the dataset's labels or fix the label map")
    return problems
