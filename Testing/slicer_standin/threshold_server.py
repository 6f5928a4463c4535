"""A stand-in for ``medsam3 serve`` (``python -m medsam3_core.server``): the real HTTP app, job queue and runner of
the core, with a thresholding engine instead of the model, so the module's local-server plumbing (start, key,
progress, cancel through the API, process-tree shutdown) is tested in seconds.

Same options as the real command (``--host --port --model --device``, the key from ``MEDSAM3_API_KEY``); label 1
(the first prompt) = voxels above 0. The ``--model`` file name switches behaviours for the tests: ``slow`` sleeps per
slice (cancel lands mid-run), ``crash-on-start`` exits like a torch DLL failure, ``die-in-run`` dies without a word
while a job runs (out of memory); anything else (``demo``) thresholds at once. It writes one ``warning:`` line to
stderr, as libraries do.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from medsam3_core.segmenter import SegmentationResult, SegmentInfo
from medsam3_core.server.app import create_app
from medsam3_core.server.runner import bind_socket, serve


class ThresholdEngine:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    def segment(self, volume, prompts, options=None, progress=None, cancel=None, concepts=None):
        for k in range(volume.shape[0]):  # one "batch" per slice, with a cancellation point each, as the engine
            if cancel is not None:
                cancel.raise_if_cancelled()
            if self.behaviour == "die-in-run":
                os._exit(9)
            if self.behaviour == "slow":
                time.sleep(0.2)
            if progress is not None:
                progress("detect", (k + 1) / volume.shape[0])
        labels = volume.with_array((volume.array > 0).astype(np.uint8))
        infos = [SegmentInfo(p, c, n, int((labels.array == n).sum()), 0.1, 0.8 if n == 1 else 0.0, None)
                 for n, (p, c) in enumerate(zip(prompts, concepts or prompts), 1)]
        return SegmentationResult(labels, infos, model=f"threshold-{self.behaviour}", options=options)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    behaviour = Path(args.model).name
    print("warning: the threshold stand-in is not a model", file=sys.stderr, flush=True)
    if behaviour == "crash-on-start":
        print("error: could not load torch (DLL load failed)", file=sys.stderr, flush=True)
        return 1
    sock = bind_socket(args.host, args.port)
    app = create_app(ThresholdEngine(behaviour), api_key=os.environ["MEDSAM3_API_KEY"],
                     model_info={"source": f"threshold-{behaviour}", "device": args.device})
    serve(app, sock, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
