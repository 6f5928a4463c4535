"""Run under ``torchrun --nproc_per_node=2`` by ``test_training_engine``: distributed validation of a tiny model.

Every rank builds the same seeded random model and the same datasets, runs
:func:`training.evaluate.distributed_sweep` (what ``Trainer.validate`` runs), and writes the rows it got to
``<out>/rank<N>.json``, so the test can check that all ranks agree with each other and with one process.

Usage: ``ddp_validation_worker.py OUT DATA_DIR [DATA_DIR ...]`` (folder2d datasets).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from training.engine import distributed as dist
from training.evaluate import distributed_sweep

THRESHOLDS = (0.0, 0.3, 0.5)
MAX_IMAGES = (0, 1)  # every slice; one per dataset (then rank 1 has no slice at all)


def validation_rows(data_dirs: list[str]) -> dict[str, dict[str, list[dict]]]:
    """``{max_images: {threshold: [Row as dict]}}`` of a seeded random 56² model on the folder2d ``data_dirs``."""
    from medsam3_core.model.bundle import Sam3Bundle
    from medsam3_core.model.tokenizer import bundled_tokenizer
    from training.config import DataConfig, ModelConfig, SourceConfig
    from training.data.sources import build_datasets
    from training.engine.modelling import build_model

    model = build_model(ModelConfig(init="tiny", tracker=False, image_size=56, patch_size=14, hidden=32,
                                    vit_hidden=32, vit_layers=2, text_hidden=32, num_queries=8))
    bundle = Sam3Bundle(model.detector, None, None, bundled_tokenizer(), torch.device("cpu"), torch.float32, 56,
                        "test")
    sources = [SourceConfig(kind="folder2d", path=d, name=Path(d).name) for d in data_dirs]
    datasets, _, _ = build_datasets(DataConfig(sources=sources, augment=False), 56, 0)
    out = {}
    for max_images in MAX_IMAGES:
        rows = distributed_sweep(bundle, datasets, THRESHOLDS, max_images)
        out[str(max_images)] = {str(t): [asdict(r) for r in rs] for t, rs in rows.items()}
    return out


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_from_env(torch.device("cpu"))
    out_dir = Path(argv[0])
    rows = validation_rows(argv[1:])
    (out_dir / f"rank{dist.rank()}.json").write_text(json.dumps(rows))
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
