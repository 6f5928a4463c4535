"""Shared pytest set-up: offscreen Qt, one torch thread per test process (CI has 2 cores), fixed seeds."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def random_bundle():
    """A random-init tiny detector+tracker on CPU, shared by the whole session (build ≈ 1–5 s)."""
    from medsam3_core.model.bundle import build_random_bundle

    return build_random_bundle(seed=0, device="cpu")


@pytest.fixture(scope="session")
def tracking_bundle():
    """The tiny random model with a tracker that keeps objects present (random init drops every track at once), so
    the sweeps visit every slice; for tests comparing whole engine runs."""
    from medsam3_core.model.bundle import build_random_bundle

    bundle = build_random_bundle(seed=0, device="cpu")
    with torch.no_grad():
        bundle.tracker.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(4.0)
    return bundle


@pytest.fixture(scope="session")
def present_bundle(tracking_bundle):
    """The engine and clips tests' name for :func:`tracking_bundle`."""
    return tracking_bundle
