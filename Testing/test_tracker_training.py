"""Tracker training on slice clips: clips (split, shapes, leaving objects), gradients, learning, export."""

import json

import numpy as np
import pytest
from builders import write_nnunet_dataset
import torch

from medsam3_core.io.geometry import Volume
from medsam3_core.model.bundle import build_random_bundle, load_model, random_video_model, save_model
from training.tracker.clips import ClipDataset, ClipSampler, clip_datasets
from training.config import DataConfig, SourceConfig, load_config
from training.data.manifests import split_cases
from training.data.samples import Case
from training.data.sources import cases_for
from training.losses.tracker import clip_loss
from training.tracker.train import freeze_detector, install_demo_tracker, main, tracker_parameters


def _nnunet(root, n=8):
    """n cases of 8 slices: label 1 a block on slices 1–5, label 2 two separate blobs on slices 2–3."""
    cases = []
    for c in range(n):
        img = np.random.default_rng(c).normal(0, 10, (24, 24, 8)).astype(np.float32)
        lab = np.zeros((24, 24, 8), np.uint8)
        lab[4:14, 4:14, 1:6] = 1
        lab[16:21, 2:7, 2:4] = 2
        lab[16:21, 16:21, 2:4] = 2
        img[lab > 0] += 150
        cases.append((img, lab))
    write_nnunet_dataset(root, cases, {"liver": 1, "kidney": 2})
    return SourceConfig(kind="nnunet", path=str(root), name="toy")


def test_clips_follow_the_case_split_and_have_the_documented_shapes(tmp_path):
    src = _nnunet(tmp_path / "Dataset001_Toy")
    train, val, weights = clip_datasets(DataConfig(sources=[src]), image_size=112, length=4)
    tr_ids, va_ids = (sorted(c.case_id for c in split_cases(cases_for(src))[k].__iter__()) for k in (0, 1))
    assert sorted(c.case_id for c in train[0].cases) == tr_ids and sorted(c.case_id for c in val[0].cases) == va_ids
    assert not set(tr_ids) & set(va_ids) and len(va_ids) == 1 and weights == [1.0]
    assert not val[0].augment and train[0].augment

    seen_cases, directions, leaving = set(), set(), 0
    for i in range(len(val[0])):
        clip = val[0].clip(i)
        seen_cases.add(clip.case_id)
        assert clip.pixels.shape == (4, 3, 112, 112) and clip.pixels.dtype == torch.float32
        assert -1.0 <= float(clip.pixels.min()) and float(clip.pixels.max()) <= 1.0
        assert clip.masks.shape[1:] == (4, 112, 112) and clip.masks.dtype == torch.bool
        assert bool(clip.present[:, 0].all())  # every object is seeded on a slice where it is
        assert clip.num_slices == 8 and len(clip.slices) == 4
        directions.add(clip.slices[1] - clip.slices[0])
        leaving += int((~clip.present).any(dim=1).sum())
        # every concept's 3D components on the first slice are objects: the two kidneys are two
        expected = ("liver", "kidney", "kidney") if clip.slices[0] in (2, 3) else ("liver",)
        assert sorted(clip.concepts) == sorted(expected) and clip.masks.shape[0] == len(expected)
    assert seen_cases == set(va_ids) and directions == {1, -1} and leaving > 0

    clip = ClipSampler(train, weights, seed=3)(7)
    again = ClipSampler(train, weights, seed=3)(7)
    assert clip.case_id in tr_ids and torch.equal(clip.pixels, again.pixels) and torch.equal(clip.masks, again.masks)


def test_augmentation_moves_every_slice_of_a_clip_alike(tmp_path):
    src = _nnunet(tmp_path / "Dataset001_Toy", n=2)
    data = ClipDataset(cases_for(src), image_size=112, length=4, augment=True)
    i = next(k for k, r in enumerate(data.refs) if r.start == 1 and r.direction == 1)  # the block alone
    plain = data.clip(i)
    moved = data.clip(i, np.random.default_rng(5))
    assert not torch.equal(plain.masks, moved.masks)
    # the block has the same cross-section on slices 1–4, so after one shared transform it still has
    assert all(torch.equal(moved.masks[0, 0], moved.masks[0, t]) for t in range(1, 4))


def _blob_cases(n=2, slices=6, side=48):
    """A bright disc that shrinks from slice 0 to slice 4 and is gone on slice 5: easy to follow."""
    cases = []
    for c in range(n):
        yy, xx = np.mgrid[:side, :side]
        labels = np.zeros((slices, side, side), np.int32)
        for k in range(slices - 1):
            labels[k] = (yy - 24 - 2 * c) ** 2 + (xx - 22) ** 2 <= (12 - 2 * k) ** 2
        ct = np.where(labels > 0, 200.0, 0.0).astype(np.float32)
        volume = Volume(ct, (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), np.eye(3), "CT")
        cases.append(Case("blobs", f"blob{c}", {1: "blob"}, lambda v=volume, lab=labels: (v, lab)))
    return cases


@pytest.fixture(scope="module")
def bundle():
    """A private random tiny bundle (this module trains it, so the session's ``random_bundle`` stays untouched).

    Its object-score head is biased to "present": at random init it says "absent" everywhere, and an absent object
    gets SAM's no-object pointer instead of the projected one (as at inference), which would hide that projection.
    """
    bundle = build_random_bundle(seed=1)
    freeze_detector(bundle)
    with torch.no_grad():
        bundle.tracker.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(3.0)
    return bundle


def test_gradients_reach_the_tracker_and_not_the_detector(bundle):
    clip = ClipDataset(_blob_cases(1), 112, length=4, augment=False).clip(0)
    loss, stats = clip_loss(None, bundle, clip)
    loss.backward()
    assert torch.isfinite(loss) and set(stats) == {"loss", "focal", "dice", "iou", "score"}
    assert all(p.grad is None for p in bundle.detector.parameters())
    named = dict(bundle.tracker.named_parameters())
    named.update({f"neck.{k}": v for k, v in bundle.tracker_neck.named_parameters()})
    for part in ("memory_attention.", "memory_encoder.", "mask_decoder.", "object_pointer_proj.", "neck.",
                 "mask_downsample."):
        grads = [p.grad for k, p in named.items() if k.startswith(part)]
        assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), part
    for p in tracker_parameters(bundle):
        p.grad = None


def test_a_few_dozen_steps_lower_the_loss_on_easy_clips(bundle):
    data = ClipDataset(_blob_cases(2), 112, length=4, augment=False)
    clips = [data.clip(i) for i in range(len(data))]
    params = tracker_parameters(bundle)
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for step in range(36):
        loss, _ = clip_loss(None, bundle, clips[step % len(clips)])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    first, last = np.mean(losses[:len(clips)]), np.mean(losses[-len(clips):])
    assert last < 0.7 * first, (first, last)


def test_entry_point_trains_exports_and_installs_only_the_tracker(tmp_path):
    source = tmp_path / "model"  # float16 like the demo model: the detector must come back bit for bit
    save_model(random_video_model(seed=0).to(torch.float16), source,
               extra={"conventions": {"keep_aspect": True, "geometry_cls": False, "tracker_trained": False,
                                      "score_threshold": 0.3}, "step": 7})
    assert not load_model(str(source), device="cpu").has_tracker
    cfg = load_config("demo")
    cfg.data.sources = [_nnunet(tmp_path / "Dataset001_Toy", n=3)]
    (tmp_path / "data.json").write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "run"
    assert main(["--model", str(source), "--out", str(out), "--data", str(tmp_path / "data.json"), "--steps", "2",
                 "--clip-length", "3", "--eval-every", "2", "--eval-clips", "2", "--log-every", "1"]) == 0
    meta = json.loads((out / "final" / "medsam3.json").read_text())
    assert meta["conventions"]["tracker_trained"] is True and meta["conventions"]["score_threshold"] == 0.3
    assert meta["tracker_training"]["step"] == 2
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history["loss"]] == [1, 2] and history["val"][0]["step"] == 0
    trained = load_model(str(out / "final"), device="cpu")
    assert trained.has_tracker

    installed = install_demo_tracker(out / "final", target=source)
    meta = json.loads((installed / "medsam3.json").read_text())
    # only the tracker flag and the tracker record change; every other key stays
    assert meta["conventions"] == {"keep_aspect": True, "geometry_cls": False, "tracker_trained": True,
                                   "score_threshold": 0.3}
    assert meta["step"] == 7 and meta["tracker_training"]["step"] == 2
    assert load_model(str(source), device="cpu").has_tracker


def test_leaving_clips_are_indexed_and_drawn_as_asked(tmp_path):
    src = _nnunet(tmp_path / "Dataset001_Toy", n=2)
    data = ClipDataset(cases_for(src), image_size=112, length=4, augment=False)
    assert data.leaving and set(data.leaving) < set(range(len(data)))
    for i in range(len(data)):  # a clip is "leaving" exactly when a seeded object is absent on its last slice
        clip = data.clip(i)
        assert (i in data.leaving) == bool((~clip.present[:, -1]).any())
    always = ClipSampler([data], [1.0], seed=0, leave_prob=1.0)
    assert all(bool((~always(step).present[:, -1]).any()) for step in range(8))
    with pytest.raises(ValueError):
        ClipSampler([data], [1.0], leave_prob=1.5)


def test_default_clip_fills_the_inference_memory_bank():
    from medsam3_core.segmenter import SegmentOptions
    from training.tracker.clips import DEFAULT_LENGTH

    # the seed plus memory_size - 1 recent frames fill the bank; two more slices evict its oldest entries
    assert DEFAULT_LENGTH == SegmentOptions().memory_size + 2


def test_clip_validation_reports_whether_the_object_score_knows_absent(bundle):
    from training.tracker.train import evaluate_clips

    data = ClipDataset(_blob_cases(1), 112, length=6, augment=False)  # the blob is gone on the last slice
    result = evaluate_clips(bundle, [data], max_clips=4)
    assert 0.0 <= result["blobs/absent"] <= 1.0 and result["absent"] == result["blobs/absent"]
    assert {"dice", "presence", "copy_dice"} <= set(result)
