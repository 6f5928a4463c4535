"""Hostile inputs and failing writes: every case ends in a clear one-line error (exit 2, nothing written) or a correct
result, never a traceback, a hang, an allocation the header merely claims, or a half-written file.

Most cases stop before a model is loaded, so the battery is fast; the few that need a model use the demo model in
detect mode or the session's random bundle.
"""

from __future__ import annotations

import gzip
import os
import resource
import signal
import stat
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from builders import oblique_direction, write_dicom_series

import medsam3_core.segmenters.opening as opening
from medsam3_core.cli.infer import EXIT_USER_ERROR, main
from medsam3_core.errors import InputError
from medsam3_core.io.atomic import atomic_path, partial_path
from medsam3_core.io.export import write_outputs
from medsam3_core.io.geometry import Volume
from medsam3_core.io.reading import read_volume, write_volume
from medsam3_core.io.validation import DEFAULT_MAX_VOXELS
from medsam3_core.phantom import demo_paths
from medsam3_core.segmenter import SegmentationResult, SegmentInfo, SegmentOptions

REPO = Path(__file__).resolve().parents[1]
SHAPE = (6, 20, 24)
GIB = 2**30


# ------------------------------------------------------------------------------------------------------ builders
def _nifti(path: Path, shape=SHAPE, dtype=np.int16) -> np.ndarray:
    values = np.random.default_rng(3).integers(0, 1000, shape).astype(dtype)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.8, 0.9, 2.5))
    sitk.WriteImage(image, str(path), useCompression=True)
    return values


def _cut(source: Path, target: Path, keep: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def _truncated_gz(tmp: Path) -> Path:
    _nifti(tmp / "whole.nii.gz")
    return _cut(tmp / "whole.nii.gz", tmp / "half.nii.gz", 0.5)


def _truncated_nii(tmp: Path) -> Path:
    _nifti(tmp / "whole.nii")
    return _cut(tmp / "whole.nii", tmp / "short.nii", 0.8)


def _truncated(suffix: str, compressed: bool):
    def build(tmp: Path) -> Path:
        image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 1000, SHAPE).astype(np.int16))
        sitk.WriteImage(image, str(tmp / f"whole{suffix}"), useCompression=compressed)
        return _cut(tmp / f"whole{suffix}", tmp / f"cut{suffix}", 0.6)

    return build


def _truncated_demo(tmp: Path) -> Path:
    return _cut(demo_paths().ct, tmp / "demo_copy.nii.gz", 0.6)


def _lying_nifti(tmp: Path, claimed_bytes: int, compressed: bool) -> Path:
    """A small NIfTI-1 whose header claims ``claimed_bytes`` of int16 voxels."""
    name = "liar.nii.gz" if compressed else "liar.nii"
    _nifti(tmp / "small.nii", shape=(4, 8, 8))
    raw = bytearray((tmp / "small.nii").read_bytes())
    voxels = claimed_bytes // 2
    k = max(1, voxels // (1024 * 1024))
    raw[40:56] = struct.pack("<8h", 3, 1024, 1024, k, 1, 1, 1, 1)
    (tmp / name).write_bytes(gzip.compress(bytes(raw)) if compressed else bytes(raw))
    return tmp / name


def _png_claiming(tmp: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width`` × ``height`` pixels (CRC fixed), with only a few bytes of data."""
    path = tmp / "bomb.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.uint8)), str(path))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _dicom(tmp: Path, name: str = "series", **kwargs) -> list[Path]:
    values = np.random.default_rng(1).integers(-200, 300, SHAPE).astype(np.int16)
    return write_dicom_series(tmp / name, values, (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), oblique_direction(20),
                              **kwargs)


def _short_dicom_pixels(tmp: Path) -> Path:
    paths = _dicom(tmp)
    ds = pydicom.dcmread(paths[2])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(paths[2])
    return tmp / "series"


def _mixed_pixel_spacing(tmp: Path) -> Path:
    paths = _dicom(tmp)
    ds = pydicom.dcmread(paths[3])
    ds.PixelSpacing = ["4.4", "4.4"]
    ds.save_as(paths[3])
    return tmp / "series"


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.nii.gz")
    return tmp / "pipe.nii.gz"


def _sheared_nrrd(tmp: Path, suffix: str = ".nrrd") -> Path:
    path = tmp / f"sheared{suffix}"
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 100, (10, 16, 16)).astype(np.int16))
    image.SetDirection(_SHEAR.ravel().tolist())
    image.SetSpacing((0.9, 1.1, 3.0))
    sitk.WriteImage(image, str(path))
    return path


_ANGLE = np.deg2rad(20)
_SHEAR = np.array([[1.0, np.sin(_ANGLE), 0.0], [0.0, np.cos(_ANGLE), 0.0], [0.0, 0.0, 1.0]])  # columns: i, j, k


# ------------------------------------------------------------------------------- the CLI battery: exit 2, one line
CLI_REFUSALS = {
    "truncated .nii.gz": (_truncated_gz, "truncated"),
    "uncompressed .nii cut short": (_truncated_nii, "truncated"),
    "truncated copy of the demo scan": (_truncated_demo, "truncated"),
    "truncated raw NRRD": (_truncated(".nrrd", False), "truncated"),
    "truncated gzip NRRD": (_truncated(".nrrd", True), "damaged"),
    "truncated raw MHA": (_truncated(".mha", False), "truncated"),
    "truncated compressed MHA": (_truncated(".mha", True), "truncated"),
    "header claims 1 GB (.nii)": (lambda t: _lying_nifti(t, GIB, False), "truncated or its header is wrong"),
    "header claims 1 GB (.nii.gz)": (lambda t: _lying_nifti(t, GIB, True), "truncated or its header is wrong"),
    "header claims 4 GB": (lambda t: _lying_nifti(t, 4 * GIB, True), "more than the limit"),
    "header claims 12 GB": (lambda t: _lying_nifti(t, 12 * GIB, False), "more than the limit"),
    "20000 x 20000 PNG": (lambda t: _png_claiming(t, 20000, 20000), "picture, more than"),
    "DICOM slice with short pixel data": (_short_dicom_pixels, "less than expected"),
    "DICOM slices with different PixelSpacing": (_mixed_pixel_spacing, "different PixelSpacing"),
    "FIFO": (_fifo, "not a regular file"),
    "sheared NRRD written as NIfTI": (_sheared_nrrd, "use --format nrrd"),
    "sheared MHA written as NIfTI": (lambda t: _sheared_nrrd(t, ".mha"), "use --format nrrd"),
}


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a model would be loaded: these refusals must come before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input or output was checked")

    monkeypatch.setattr(opening, "open_segmenter", refuse)


@pytest.mark.parametrize("case", list(CLI_REFUSALS))
def test_cli_refuses_bad_input_with_one_line_before_loading_a_model(tmp_path, capfd, no_model, case):
    build, message = CLI_REFUSALS[case]
    source = build(tmp_path)
    out = tmp_path / "out"
    code = main(["infer", str(source), "kidney", "-o", str(out), "--device", "cpu", "--progress", "none"])
    err = capfd.readouterr().err
    assert code == EXIT_USER_ERROR
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()


# --------------------------------------------------------------------------------------------- reading in detail
def test_lying_header_is_refused_without_decoding(tmp_path, monkeypatch):
    def decode(self):
        raise AssertionError("voxels were decoded")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", decode)
    for source in (_lying_nifti(tmp_path, 12 * GIB, True), _png_claiming(tmp_path, 20000, 20000)):
        with pytest.raises(InputError):
            read_volume(source)


def test_max_voxels_is_configurable(tmp_path):
    values = _nifti(tmp_path / "scan.nii.gz")
    assert DEFAULT_MAX_VOXELS == 2**30
    with pytest.raises(InputError, match="--max-voxels"):
        read_volume(tmp_path / "scan.nii.gz", max_voxels=values.size - 1)
    assert read_volume(tmp_path / "scan.nii.gz", max_voxels=values.size).shape == SHAPE
    with pytest.raises(InputError, match="--max-voxels"):
        read_volume(_dicom(tmp_path)[0].parent, max_voxels=values.size - 1)


def test_complete_files_still_read_exactly(tmp_path):
    for name in ("ok.nii.gz", "ok.nii", "ok.nrrd", "ok.mha"):
        values = _nifti(tmp_path / name)
        np.testing.assert_array_equal(read_volume(tmp_path / name).array, values)


def test_multi_member_gzip_is_complete(tmp_path):
    """A .nii.gz written in several gzip members (bgzip, pigz -i) has a partial trailer but is whole."""
    values = _nifti(tmp_path / "one.nii")
    raw = (tmp_path / "one.nii").read_bytes()
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(read_volume(tmp_path / "multi.nii.gz").array, values)


def test_fifo_inside_a_dicom_folder_is_skipped(tmp_path):
    folder = _dicom(tmp_path)[0].parent
    os.mkfifo(folder / "pipe")
    writer = threading.Thread(target=lambda: open(folder / "pipe", "wb").close(), daemon=True)
    writer.start()  # would let a reader that opened the pipe see EOF instead of hanging the suite
    try:
        assert read_volume(folder).shape == SHAPE
    finally:
        os.close(os.open(folder / "pipe", os.O_RDONLY | os.O_NONBLOCK))
        writer.join(5)


def test_nifti2_is_read_like_nifti1(tmp_path):
    import nibabel as nib

    values = np.random.default_rng(0).integers(0, 500, (14, 12, 10)).astype(np.int16)  # i, j, k
    affine = np.eye(4)
    affine[:3, :3] = oblique_direction(15) @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    nib.save(nib.Nifti1Image(values, affine), tmp_path / "v1.nii.gz")
    nib.save(nib.Nifti2Image(values, affine), tmp_path / "v2.nii.gz")
    one, two = read_volume(tmp_path / "v1.nii.gz"), read_volume(tmp_path / "v2.nii.gz")
    np.testing.assert_array_equal(two.array, one.array)
    assert two.same_geometry(one, atol=1e-4)


def test_two_dicom_series_warn_about_the_one_not_taken(tmp_path):
    big = _dicom(tmp_path, "mixed", description="big")
    small_values = np.zeros((3, 20, 24), np.int16)
    small = write_dicom_series(tmp_path / "mixed", small_values, description="small")
    small_uid = str(pydicom.dcmread(small[0]).SeriesInstanceUID)
    volume = read_volume(big[0].parent)
    assert volume.shape == SHAPE
    assert any(small_uid in w and "--series" in w for w in volume.metadata["warnings"])


def test_two_d_nifti_gives_two_d_label_map(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((512, 512), np.int16)), str(tmp_path / "slice.nii.gz"))
    volume = read_volume(tmp_path / "slice.nii.gz")
    write_volume(volume.with_array(np.ones(volume.shape, np.uint8)), tmp_path / "labels.nii.gz")
    written = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert written.GetDimension() == 2 and written.GetSize() == (512, 512)


def test_two_d_nifti_in_two_d_label_map_out_end_to_end(tmp_path, monkeypatch, random_bundle):
    from medsam3_core.segmenters.local import LocalSegmenter

    monkeypatch.setattr(opening, "open_segmenter", lambda *args, **kwargs: LocalSegmenter(random_bundle))
    values = (np.random.default_rng(0).random((512, 512)) * 400 - 100).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "slice.nii.gz"))
    out = tmp_path / "out"
    code = main(["infer", str(tmp_path / "slice.nii.gz"), "liver", "-o", str(out), "--mode", "detect",
                 "--progress", "none", "--quiet", "--per-segment", "--threshold", "0"])
    assert code == 0
    for name in ("labels.nii.gz", "masks/liver.nii.gz"):
        written = sitk.ReadImage(str(out / name))
        assert written.GetDimension() == 2 and written.GetSize() == (512, 512)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_sheared_grid_is_kept_exactly_in_nrrd_and_mha(tmp_path, suffix):
    volume = read_volume(_sheared_nrrd(tmp_path, suffix))
    np.testing.assert_allclose(volume.direction, _SHEAR, atol=1e-9)
    labels = volume.with_array((volume.array > 50).astype(np.uint8))
    for fmt in (".nrrd", ".mha"):
        written = read_volume(write_volume(labels, tmp_path / f"labels{fmt}"))
        np.testing.assert_allclose(written.direction, _SHEAR, atol=1e-9)
        assert written.same_geometry(volume, atol=1e-9)
    with pytest.raises(InputError, match="not perpendicular"):
        write_volume(labels, tmp_path / "labels.nii.gz")


def test_itk_warnings_do_not_reach_stderr(tmp_path, capfd):
    import medsam3_core.io.reading  # noqa: F401  (switches ITK's warning printing off)

    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8))
    image.SetDirection(_SHEAR.ravel().tolist())
    sitk.WriteImage(image, str(tmp_path / "coerced.nii.gz"))  # ITK coerces the direction and would say so
    assert capfd.readouterr().err == ""


DEGENERATE = {
    "1x1x1 volume": lambda t: _volume_file(t / "a.nii.gz", np.zeros((1, 1, 1), np.int16)),
    "5x1x1 volume": lambda t: _volume_file(t / "b.nii.gz", np.zeros((5, 1, 1), np.int16)),
    "1x1 PNG": lambda t: _volume_file(t / "c.png", np.zeros((1, 1), np.uint8)),
    "3x3 RGB PNG": lambda t: _volume_file(t / "d.png", np.zeros((3, 3, 3), np.uint8), vector=True),
}


def _volume_file(path: Path, array: np.ndarray, vector: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_shapes_get_a_clear_error(tmp_path, random_bundle, case):
    from medsam3_core.segmenters.local import LocalSegmenter

    volume = read_volume(DEGENERATE[case](tmp_path))
    with pytest.raises(InputError, match="too small to segment") as err:
        LocalSegmenter(random_bundle).segment(volume, ["kidney"], SegmentOptions(mode="detect"))
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------- outputs
def _result(shape=(4, 20, 24)) -> SegmentationResult:
    grid = Volume(np.zeros(shape, np.int16), (0.8, 0.9, 2.5), (1.0, 2.0, 3.0), oblique_direction(10), "CT")
    labels = np.zeros(shape, np.uint8)
    labels[1:3, 4:12, 5:15] = 1
    segment = SegmentInfo("kidney", "kidney", 1, int(labels.sum()), 1.0, 0.9, (1, 2))
    return SegmentationResult(grid.with_array(labels), [segment], None, {}, SegmentOptions(), "demo", [])


OUTPUT_UNDER_A_FILE = {
    "-o": lambda f: ["-o", str(f / "out")],
    "--dicom-seg": lambda f: ["--dicom-seg", str(f / "seg.dcm")],
    "--png": lambda f: ["--png", str(f / "png")],
}


@pytest.mark.parametrize("option", list(OUTPUT_UNDER_A_FILE))
def test_output_under_a_regular_file_is_refused_before_the_model(tmp_path, capfd, no_model, option):
    blocker = tmp_path / "some_file"
    blocker.write_text("x")
    args = ["infer", "demo", "kidney", "-o", str(tmp_path / "out"), *OUTPUT_UNDER_A_FILE[option](blocker)]
    code = main([*args, "--device", "cpu", "--progress", "none"])
    err = capfd.readouterr().err
    assert code == EXIT_USER_ERROR and err.count("\n") == 1 and "is a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["some_file"]


def test_convert_and_training_check_their_output_folder_first(tmp_path, capfd):
    from medsam3_core.cli.main import main as medsam3
    from training.run import main as train

    blocker = tmp_path / "some_file"
    blocker.write_text("x")
    assert medsam3(["convert", str(tmp_path / "missing.pt"), str(blocker / "model")]) == 2
    assert "is a file" in capfd.readouterr().err
    assert train(["--output-dir", str(blocker / "run")]) == 2
    assert "is a file" in capfd.readouterr().err


def test_every_output_gets_the_same_ordinary_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        written = write_outputs(_result(), tmp_path / "out", per_segment=True)
        target = write_volume(_result().labelmap, tmp_path / "single.nrrd")
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(Path(p).stat().st_mode) for p in [*written.values(), target]}
    assert modes == {0o644}


def test_short_write_is_caught_before_publishing(tmp_path, monkeypatch):
    real_write = sitk.WriteImage

    def short_write(image, path, *args, **kwargs):  # what a full disk or a file-size limit does to ITK
        real_write(image, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        with pytest.raises(InputError, match="did not read back as written"):
            write_outputs(_result(), tmp_path / f"out{suffix.replace('.', '_')}", fmt=suffix.lstrip("."))
    assert list(tmp_path.iterdir()) == []


def test_stale_partials_of_a_killed_run_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    crash = (
        "import os, signal, sys\n"
        "from medsam3_core.io.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half a label map')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    run = subprocess.run([sys.executable, "-c", crash, str(out / "labels.nii.gz")], cwd=REPO)
    assert run.returncode == -signal.SIGKILL
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and ".partial" in left[0]
    alive = partial_path(out / "report.json")  # a run in progress (this process) keeps its file
    alive.write_text("{}")
    write_outputs(_result(), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["labels.nii.gz", "report.json", alive.name])
    alive.unlink()
    with atomic_path(out / "x.txt") as tmp:  # single-file writes clean up the same way
        tmp.write_text("x")


def test_file_size_limit_fails_the_run_and_publishes_nothing(tmp_path):
    """``ulimit -f``: ITK's writer does not notice; the read-back does, and the run ends with exit 2."""
    out = tmp_path / "out"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run(
        [sys.executable, "-m", "medsam3_core.volume", "infer", "demo", "kidney", "liver", "spleen", "-o", str(out),
         "--mode", "detect", "--device", "cpu", "--progress", "none"],
        cwd=REPO, env=env, preexec_fn=limit, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == EXIT_USER_ERROR, run.stderr
    assert run.stderr.count("\n") == 1 and "labels.nii.gz" in run.stderr, run.stderr
    assert not out.exists() or list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------------- DICOM SEG
def test_seg_derives_slice_thickness_from_positions(tmp_path):
    from medsam3_core.io.dicom_seg import write_dicom_seg

    for path in _dicom(tmp_path):
        ds = pydicom.dcmread(path)
        del ds.SliceThickness
        ds.save_as(path)
    source = read_volume(tmp_path / "series")
    result = _result(SHAPE)
    labels = source.with_array(result.labelmap.array)
    seg = pydicom.dcmread(write_dicom_seg(labels, result.segments, source, tmp_path / "seg.dcm"))
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(2.5)


def test_seg_without_frame_of_reference_is_refused_naming_the_attribute(tmp_path, capfd, no_model):
    from medsam3_core.io.dicom_seg import write_dicom_seg

    for path in _dicom(tmp_path):
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    source = read_volume(tmp_path / "series")
    with pytest.raises(InputError, match=r"FrameOfReferenceUID \(0020,0052\)"):
        write_dicom_seg(source.with_array(np.zeros(SHAPE, np.uint8)), _result().segments, source, tmp_path / "s.dcm")
    code = main(["infer", str(tmp_path / "series"), "kidney", "-o", str(tmp_path / "out"), "--dicom-seg",
                 str(tmp_path / "seg.dcm"), "--device", "cpu", "--progress", "none"])
    err = capfd.readouterr().err
    assert code == EXIT_USER_ERROR and err.count("\n") == 1 and "FrameOfReferenceUID" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "seg.dcm").exists()


# ----------------------------------------------------------------------------------------------------- argparse
@pytest.mark.parametrize("argv", [["infer", "scan.nii.gz"], ["infer", "scan.nii.gz", "kidney", "--mode", "fast"],
                                  ["infer", "scan.nii.gz", "kidney", "--bogus"], ["frobnicate"]])
def test_argparse_errors_take_two_lines(capsys, argv):
    from medsam3_core.cli.main import main as medsam3

    with pytest.raises(SystemExit) as exit_:
        medsam3(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 2 and "error:" in err.splitlines()[0], err
