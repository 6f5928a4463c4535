"""The training loop: DDP, mixed precision, gradient accumulation, checkpoints/resume, validation, logging.

One :class:`Trainer` per process. Under ``torchrun`` every rank builds the same model and data, joins the process
group (NCCL on GPU, gloo on CPU), wraps the detector's forward in ``DistributedDataParallel`` and draws its own share
of each epoch's balanced sample sequence. Rank 0 alone writes checkpoints, TensorBoard scalars, the progress bar and
the exported models; the other ranks wait at a barrier. Validation (the paper's protocol, :mod:`training.evaluate`)
runs at every epoch end on all ranks, each scoring its share of the validation slices; the per-dataset sums are
all-reduced, so every rank holds the same metrics. It scores a grid of score thresholds from one pass of the network
and keeps the best (``engine.calibrate``): the export states it as the model's recommended threshold (``medsam3.json``
conventions ``score_threshold``), which inference uses unless the user gives one. The weights with the best selection
score are exported to ``<output_dir>/best`` and the final ones to ``<output_dir>/final``, both weights-only folders
that ``medsam3_core.model.bundle.load_model`` reads.

Input conventions follow the weights (``training.engine.modelling``): a checkpoint trained by Meta is fine-tuned on
stretched slices with the geometry CLS token appended to every prompt, and exported saying so.

Unused parameters: with text-only prompts the geometry encoder, the 4th FPN level, one pixel-decoder stage and the
CLIP's own text projection receive no gradient, hence ``find_unused_parameters`` by default.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from medsam3_core.errors import Cancelled
from medsam3_core.io.atomic import atomic_path
from medsam3_core.model.bundle import Sam3Bundle, select_device
from medsam3_core.model.tokenizer import bundled_tokenizer, tokenize
from medsam3_core.progress import CancelToken

from training.engine import distributed as dist
from training.engine.checkpoint import TrainState, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.losses.criterion import SetCriterion
from training.data.samples import collate
from training.data.sampler import BalancedSampler
from training.data.checks import check_data
from training.data.problems import DataProblems
from training.data.sources import build_datasets
from training.evaluate import CALIBRATION_THRESHOLDS, dataset_means, distributed_sweep, format_table, pick_threshold
from training.engine.lora import apply_lora, merged
from training.engine.modelling import PromptedForward, build_model, enable_activation_checkpointing, export_weights
from training.optim import build_optimizer, build_param_groups
from training.engine.outputs import AuxCapture

__all__ = ["Trainer"]


class Trainer:
    """Builds everything from a validated :class:`TrainConfig`; :meth:`fit` trains, validates and exports.

    ``on_step(step, logs)`` is called on every rank after each optimiser step (tests use it to record losses).
    """

    def __init__(self, cfg: TrainConfig, on_step: Optional[Callable[[int, dict], None]] = None) -> None:
        self.cfg = cfg.validate()
        e = cfg.engine
        if e.threads > 0:
            torch.set_num_threads(e.threads)
        self.device, _ = select_device(e.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", dist.local_rank())
            torch.cuda.set_device(self.device)
        dist.init_from_env(self.device)
        self.rank, self.world = dist.rank(), dist.world_size()
        torch.manual_seed(e.seed + self.rank)
        self.on_step = on_step
        self.out_dir = Path(cfg.output_dir)
        self.ckpt_path = self.out_dir / "checkpoints" / "last.pt"

        self.model = build_model(cfg.model)
        detector = self.model.detector
        self.trainable: torch.nn.Module = detector
        if cfg.model.lora_rank > 0:
            self.trainable = apply_lora(detector, cfg.model.lora_rank, cfg.model.lora_alpha)
        if e.grad_checkpointing:
            enable_activation_checkpointing(detector)
        self.model.root.to(self.device)
        detector.train()
        self.capture = AuxCapture(detector)
        self.net: torch.nn.Module = PromptedForward(self.trainable, self.model.geometry_cls)
        if dist.is_initialized():
            self.net = DistributedDataParallel(
                self.net,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=e.find_unused_parameters,
            )
        self.amp = e.amp and self.device.type == "cuda"
        self.tokenizer = bundled_tokenizer()
        self._tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        d = cfg.data
        # every problem of the data at once, before hours of training (rank 0 reads the files, the others wait)
        problems = dist.broadcast_object(check_data(d) if dist.is_main() else None)
        if problems:
            raise DataProblems(problems)
        self.train_sets, self.val_sets, weights = build_datasets(d, self.model.image_size, e.seed,
                                                                 keep_aspect=self.model.keep_aspect)
        sizes = [len(s) for s in self.train_sets]
        micro_per_step = e.grad_accum * d.batch_size * self.world
        per_epoch = e.steps_per_epoch * micro_per_step if e.steps_per_epoch else sum(sizes)
        self.sampler = BalancedSampler(sizes, weights, per_epoch, seed=e.seed, rank=self.rank, world_size=self.world)
        self.steps_per_epoch = max(1, len(self.sampler) // (d.batch_size * e.grad_accum))
        self.criterion = SetCriterion(cfg.loss)
        self.optimizer, self.scheduler = build_optimizer(build_param_groups(self.trainable, cfg.optim), cfg.optim)
        self.state = TrainState.fresh()
        self._validated: Optional[tuple[int, dict]] = None  # (step, results) of the latest validation
        self._cancel: Optional[CancelToken] = None
        if self.ckpt_path.is_file():
            self.state = load_checkpoint(self.ckpt_path, self.trainable, self.optimizer, self.scheduler,
                                         config=cfg.to_dict())
        self.writer = None
        if dist.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.out_dir / "config.json") as tmp:
                tmp.write_text(json.dumps(cfg.to_dict(), indent=2), encoding="utf-8")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    # -- one step -----------------------------------------------------------------------------------------------
    def _tokens_for(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._tokens]
        if missing:
            ids, mask = tokenize(self.tokenizer, missing)
            for i, t in enumerate(missing):
                self._tokens[t] = (ids[i], mask[i])
        ids, mask = zip(*(self._tokens[t] for t in texts))
        return torch.stack(ids).to(self.device), torch.stack(mask).to(self.device)

    def _forward_backward(self, batch: dict, sync: bool) -> dict:
        ids, mask = self._tokens_for(batch["texts"])
        pixels = batch["pixel_values"].to(self.device, non_blocking=True)
        targets = [t.to(self.device) for t in batch["targets"]]
        ddp = isinstance(self.net, DistributedDataParallel)
        no_sync = self.net.no_sync if (ddp and not sync) else contextlib.nullcontext
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with no_sync():
            with autocast:
                out = self.net(pixel_values=pixels, input_ids=ids, attention_mask=mask)
                loss, logs = self.criterion(self.capture.collect(out), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {self.state['step']}: {logs}")
            (loss / self.cfg.engine.grad_accum).backward()
        logs["loss"] = float(loss.detach())
        return logs

    # -- loop ---------------------------------------------------------------------------------------------------
    def fit(self, cancel: Optional[CancelToken] = None) -> dict:
        """Train until ``epochs`` or ``max_steps``; returns the last validation summary (dataset → mean Dice).

        ``cancel`` (set by a signal, :mod:`medsam3_core.signals`) is checked after every optimiser step on all ranks
        together: the run then writes its checkpoint and raises :class:`Cancelled`, so the same command resumes it.
        """
        self._cancel = cancel
        e = self.cfg.engine
        max_steps = e.max_steps or e.epochs * self.steps_per_epoch
        bar = self._bar(max_steps)
        results: dict = {}
        try:
            while self.state["epoch"] < e.epochs and self.state["step"] < max_steps:
                finished = self._run_epoch(max_steps, bar)
                if not finished:
                    break
                self.state.update(epoch=self.state["epoch"] + 1, position=0)
                results = self.validate()
                self._save()
                self._stop_if_cancelled(saved=True)
        finally:
            if bar is not None:
                bar.close()
        if self._validated is None or self._validated[0] != self.state["step"]:
            results = self.validate()  # the final weights (a step budget that ends mid-epoch) get calibrated too
        self._save()
        self._stop_if_cancelled(saved=True)
        self.export("final", {"validation": results, "step": self.state["step"]} if results else None)
        dist.barrier()
        return results

    def _run_epoch(self, max_steps: int, bar) -> bool:
        """One epoch from the saved position; ``False`` when the step budget ended it early."""
        e, d = self.cfg.engine, self.cfg.data
        epoch = self.state["epoch"]
        for ds in self.train_sets:
            ds.set_epoch(epoch)
        self.sampler.set_epoch(epoch, self.state["position"])
        loader = torch.utils.data.DataLoader(
            torch.utils.data.ConcatDataset(self.train_sets),
            batch_size=d.batch_size,
            sampler=self.sampler,
            collate_fn=collate,
            num_workers=d.num_workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            # its own generator: drawing the loader's base seed from the global RNG would shift dropout after a resume
            generator=torch.Generator().manual_seed(e.seed + epoch),
        )
        micro, sums, t0 = 0, {}, time.time()
        for batch in loader:
            micro += 1
            sync = micro % e.grad_accum == 0
            logs = self._forward_backward(batch, sync)
            self.state["position"] += d.batch_size
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            if not sync:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable.parameters(), self.cfg.optim.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.state["step"] += 1
            step = self.state["step"]
            mean = {k: v / e.grad_accum for k, v in sums.items()}
            mean["grad_norm"] = float(grad_norm)
            sums = {}
            if self.on_step is not None:
                self.on_step(step, mean)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{mean['loss']:.3f}", epoch=epoch)
            if self.writer is not None and step % e.log_every == 0:
                for k, v in mean.items():
                    self.writer.add_scalar(f"train/{k}", v, step)
                for g in self.optimizer.param_groups:
                    self.writer.add_scalar(f"lr/{g['name']}", g["lr"], step)
                self.writer.add_scalar("train/sec_per_step", (time.time() - t0) / e.log_every, step)
                t0 = time.time()
            self._stop_if_cancelled()
            if step % e.checkpoint_every == 0:
                self._save()
            if step >= max_steps:
                break
        self.optimizer.zero_grad(set_to_none=True)  # a partial accumulation at the epoch end is dropped
        return self.sampler.per_rank - self.state["position"] < d.batch_size * e.grad_accum

    def _stop_if_cancelled(self, saved: bool = False) -> None:
        """After a signal (on any rank): write the checkpoint unless just ``saved``, then raise :class:`Cancelled`."""
        if not dist.any_rank(self._cancel is not None and self._cancel.cancelled):
            return
        if not saved:
            self._save()
        raise Cancelled(f"Training stopped at step {self.state['step']}; its checkpoint {self.ckpt_path} is saved and "
                        "the same command resumes it.")

    # -- validation, checkpoints, export -----------------------------------------------------------------------
    def validate(self) -> dict:
        """Paper-protocol Dice per dataset on the validation split, on every rank; exports ``best`` on improvement.

        Returns :func:`~training.evaluate.dataset_means` at the calibrated threshold plus ``score_threshold``
        itself (``{}`` without a validation split). With ``engine.calibrate`` the thresholds
        :data:`~training.evaluate.CALIBRATION_THRESHOLDS` are scored and the one with the best selection score is
        kept; the best checkpoint is judged at it too, because that is the threshold the exported model will be
        run at. Without, ``engine.score_threshold`` is used.
        """
        if not self.val_sets:
            return {}
        e = self.cfg.engine
        thresholds = CALIBRATION_THRESHOLDS if e.calibrate else [e.score_threshold]
        bundle = Sam3Bundle(
            detector=self.model.detector,
            tracker=None,
            tracker_neck=None,
            tokenizer=self.tokenizer,
            device=self.device,
            dtype=next(self.model.detector.parameters()).dtype,
            image_size=self.model.image_size,
            source="training",
            keep_aspect=self.model.keep_aspect,
            geometry_cls=self.model.geometry_cls,
        )
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with autocast:
            rows_by = distributed_sweep(bundle, self.val_sets, thresholds, self.cfg.data.val_max_images,
                                        instances=e.eval_instances)
        threshold, selection = pick_threshold(rows_by)
        rows = rows_by[threshold]
        results = {**dataset_means(rows), "score_threshold": threshold}
        step = self.state["step"]
        self._validated = (step, results)
        if dist.is_main():
            if self.writer is not None:
                for name, value in results.items():
                    self.writer.add_scalar(f"val/{name}" if name == "score_threshold" else f"val/dice/{name}",
                                           value, step)
                self.writer.flush()
            curve = "  ".join(f"{t:g}: {v:.3f}" for t, v in selection.items())
            print(f"\nvalidation after epoch {self.state['epoch']} (step {step}), score threshold {threshold:g}:\n"
                  f"{format_table(rows)}\nselection score by threshold: {curve}", flush=True)
            if results.get("selection", -1.0) > self.state["best"]:
                self.state["best"] = results["selection"]
                self.export("best", {"validation": results, "step": step})
        dist.barrier()
        return results

    def _save(self) -> None:
        self.state["world_size"] = self.world
        if dist.is_main():
            save_checkpoint(
                self.ckpt_path, self.trainable, self.optimizer, self.scheduler, self.state, self.cfg.to_dict()
            )
        dist.barrier()

    def export(self, name: str, extra: Optional[dict] = None) -> Optional[Path]:
        """Weights-only model folder ``<output_dir>/<name>`` (rank 0), LoRA merged into a copy of the weights.

        Its ``medsam3.json`` states how inference must feed it (``medsam3_core.model.bundle`` reads the conventions):
        the input conventions it was trained with (the init's), whether its tracker is usable (never trained here,
        so only if the init had a trained one), and the score threshold calibrated at the latest validation.
        """
        if not dist.is_main():
            return None
        info = {"trained_by": "training.run", "config": self.cfg.name, "step": self.state["step"], **(extra or {})}
        conventions = {"keep_aspect": self.model.keep_aspect, "geometry_cls": self.model.geometry_cls,
                       "tracker_trained": self.cfg.model.init != "tiny"}
        threshold = self._validated[1]["score_threshold"] if self._validated is not None else None
        if threshold is not None and 0.0 < threshold < 1.0:  # what medsam3_core.model.bundle accepts; else it uses 0.5
            conventions["score_threshold"] = threshold
        info["conventions"] = conventions
        with merged(self.model, self.trainable) as plain:
            return export_weights(plain, self.out_dir / name, extra=info)

    def _bar(self, total: int):
        if not dist.is_main():
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=self.state["step"], desc=self.cfg.name, unit="step", dynamic_ncols=True)

    def close(self) -> None:
        self.capture.remove()
        if self.writer is not None:
            self.writer.close()
