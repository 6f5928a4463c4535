"""``torchrun --nproc_per_node=N -m training.run --config demo|paper|file.json [--data kind:path] [--set k=v]``.

Also runs as a single process (``python -m training.run``). A run resumes automatically from
``<output_dir>/checkpoints/last.pt`` when it exists, so re-issuing the same command after a crash or a kill continues
where it stopped. Exit codes: 0 done, 2 configuration/data error (one line on stderr, no traceback), 3 stopped by
Ctrl-C, SIGTERM or SIGHUP (after writing a checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from medsam3_core.errors import Cancelled, MedSam3Error
from medsam3_core.signals import cancel_on_signals

from training.engine import distributed as dist
from training.config import TrainConfig, apply_overrides, load_config

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun -m training.run", description="Fine-tune SAM3 on medical data.")
    p.add_argument("--config", default="demo", help="preset (demo, paper) or a JSON config file (default: demo)")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        help="dataset kind:path[::name] (nnunet, folder2d, jsonl; phantom|mni_brain:CASES[@SEED]); repeat; "
        "replaces the config's datasets",
    )
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a setting")
    p.add_argument("--output-dir", help="where checkpoints, TensorBoard logs and exported models go")
    p.add_argument("--init", help="initial weights: tiny, demo, sam3, a model folder or checkpoint file")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--check-data", action="store_true",
                   help="read every case of every data source, print one line per problem and exit (0: no problems)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = list(args.set)
        if args.output_dir:
            overrides.append(f"run.output_dir={args.output_dir}")
        if args.init:
            overrides.append(f"model.init={args.init}")
        cfg = apply_overrides(load_config(args.config), overrides, args.data or None).validate()
        if args.print_config:
            import json

            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        if args.check_data:
            return _check_data(cfg)
        from medsam3_core.io.outputs import check_output_folder
        from training.engine.trainer import Trainer

        check_output_folder(cfg.output_dir, "training output folder")  # before the model and data are loaded
        with cancel_on_signals() as signals:  # Ctrl-C, SIGTERM, SIGHUP: checkpoint, then exit 3
            with signals.immediately():
                trainer = Trainer(cfg)
            try:
                results = trainer.fit(cancel=signals.token)
            finally:
                trainer.close()
        if dist.is_main():
            dice = f"  (validation mean Dice {results['mean']:.3f})" if results else ""
            print(f"done: {cfg.output_dir}/final{dice}")
        return 0
    except Cancelled as err:
        print(str(err), file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("Interrupted; the latest checkpoint is kept and the same command resumes from it.", file=sys.stderr)
        return 3
    except MedSam3Error as err:
        for line in getattr(err, "problems", [str(err)]):  # training-data problems: one line each
            print(f"error: {line}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown()


def _check_data(cfg: TrainConfig) -> int:
    """``--check-data``: every problem of the configured data on stderr, one line each, and a summary on stdout."""
    from training.data.checks import check_data

    seen: list[str] = []
    problems = check_data(cfg.data, on_case=lambda source, case: seen.append(case))
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    verdict = f"{len(problems)} problem(s)" if problems else "no problems"
    print(f"checked {len(cfg.data.sources)} source(s), {len(seen)} case(s): {verdict}")
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
