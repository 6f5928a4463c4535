"""Run a medsam3 entry point with a pause at one stage, so a test can send a signal exactly there.

``python Testing/stage_pause.py STAGE GO_FILE MODULE [ARGS ...]`` runs ``python -m MODULE ARGS`` after wrapping the
function of ``STAGE``: when the run gets there it prints ``PAUSED STAGE`` on stderr and waits until ``GO_FILE``
exists (the test creates it after sending its signal), then prints ``RESUMED STAGE`` and goes on. No timing is
involved: the test knows the stage was reached, and whether the program went on past it.

Stages: ``load`` (reading the model weights), ``detect`` (the first detection progress report), ``write`` (the
export, after the first file is staged and before anything is published), ``train-data`` (the trainer reading its
data) and ``train-step`` (the trainer's second micro-batch, after one optimiser step).
"""

from __future__ import annotations

import functools
import os
import runpy
import sys
import time

_WAIT_LIMIT_S = 300.0  # only guards against a forgotten go file; the tests create it


def _pause(stage: str, go_file: str) -> None:
    print(f"PAUSED {stage}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + _WAIT_LIMIT_S
    while not os.path.exists(go_file) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"RESUMED {stage}", file=sys.stderr, flush=True)


def _wrap(owner: object, name: str, before, nth: int = 1) -> None:
    """Replace ``owner.name`` by a wrapper that calls ``before(*args)`` on the ``nth`` call only."""
    original = getattr(owner, name)
    calls = {"n": 0}

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            before(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def install(stage: str, go_file: str) -> None:
    pause = functools.partial(_pause, stage, go_file)
    if stage == "load":
        import medsam3_core.model.bundle as bundle

        _wrap(bundle, "load_model", lambda *a, **k: pause())
    elif stage == "detect":
        import medsam3_core.segmenters.local as local

        original = local.LocalSegmenter.segment

        def segment(self, volume, prompts, options=None, progress=None, cancel=None, concepts=None):
            seen = {"paused": False}

            def relay(name, fraction):
                if name == "detect" and not seen["paused"]:
                    seen["paused"] = True
                    pause()
                if progress is not None:
                    progress(name, fraction)

            return original(self, volume, prompts, options, relay, cancel, concepts)

        local.LocalSegmenter.segment = segment
    elif stage == "write":
        import medsam3_core.io.export as export

        _wrap(export, "_write_one", lambda *a, **k: pause(), nth=2)
    elif stage == "train-data":
        import training.engine.trainer as trainer

        _wrap(trainer, "build_datasets", lambda *a, **k: pause())
    elif stage == "train-step":
        import training.engine.trainer as trainer

        _wrap(trainer.Trainer, "_forward_backward", lambda *a, **k: pause(), nth=2)
    else:
        raise SystemExit(f"unknown stage {stage!r}")


if __name__ == "__main__":
    stage, go, module, *rest = sys.argv[1:]
    install(stage, go)
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
