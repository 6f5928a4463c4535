"""Volume sessions ("encode once, prompt many"): a second prompt runs no ViT and gives the label map of a cold run."""

import numpy as np
import pytest

from medsam3_core.engine.session import VolumeSession
from medsam3_core.engine.volume_engine import VolumeEngine
from medsam3_core.io.geometry import Volume
from medsam3_core.segmenter import SegmentOptions
from medsam3_core.segmenters.local import LocalSegmenter

OPTIONS = SegmentOptions(threshold=0.12, window=(60.0, 100.0), batch_size=3)


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(5)
    return Volume(rng.normal(60, 25, (8, 26, 30)).astype(np.float32), spacing=(0.8, 0.8, 2.0), modality="MR")


class CountingEngine(VolumeEngine):
    """Counts the ViT passes (batches of slices) through the detector."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoded: list[int] = []
        original = self.detector.encode_images

        def counting(pixels):
            self.encoded.append(int(pixels.shape[0]))
            return original(pixels)

        self.detector.encode_images = counting


@pytest.mark.parametrize("mode", ["track", "detect"])
def test_second_prompt_encodes_nothing_and_equals_a_cold_run(tracking_bundle, volume, mode):
    options = SegmentOptions(**{**OPTIONS.to_dict(), "mode": mode})
    engine = CountingEngine(tracking_bundle, max_objects=3)
    with VolumeSession(engine, volume) as session:
        first = session.run(["liver"], options)
        assert sum(engine.encoded) == volume.shape[0] and first.encoder_calls == len(engine.encoded)
        engine.encoded.clear()
        second = session.run(["spleen", "kidney"], options)
        assert engine.encoded == [] and second.encoder_calls == 0
        assert session.nbytes > 0
    cold = CountingEngine(tracking_bundle, max_objects=3).run(volume, ["spleen", "kidney"], options)
    assert cold.labels.any()
    np.testing.assert_array_equal(second.labels, cold.labels)
    np.testing.assert_array_equal(second.confidence, cold.confidence)
    assert [(o.object_id, o.prompt, o.voxels) for o in second.objects] == [
        (o.object_id, o.prompt, o.voxels) for o in cold.objects
    ]


def test_other_image_settings_encode_again(tracking_bundle, volume):
    engine = CountingEngine(tracking_bundle, max_objects=3)
    with VolumeSession(engine, volume) as session:
        session.run(["liver"], OPTIONS)
        engine.encoded.clear()
        other_window = SegmentOptions(**{**OPTIONS.to_dict(), "window": (40.0, 200.0)})
        session.run(["liver"], other_window)
        assert sum(engine.encoded) == volume.shape[0]
    assert session.nbytes == 0  # closed: features freed


def test_local_session_gives_the_result_of_a_plain_call(tracking_bundle, volume):
    segmenter = LocalSegmenter(tracking_bundle, max_objects=3)
    plain = segmenter.segment(volume, ["spleen"], OPTIONS)
    with segmenter.open_session(volume) as session:
        session.segment(["liver"], OPTIONS)
        again = session.segment(["spleen"], OPTIONS)
    np.testing.assert_array_equal(again.labelmap.array, plain.labelmap.array)
    assert again.labelmap.same_geometry(volume)
    assert [s.to_dict() if hasattr(s, "to_dict") else s for s in again.segments] == [
        s.to_dict() if hasattr(s, "to_dict") else s for s in plain.segments
    ]
