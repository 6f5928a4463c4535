"""DICOM Segmentation export (``--dicom-seg out.dcm``): the result as a standard object a PACS or viewer can load.

The SEG references the source series image by image, has one segment per prompt (label = the prompt as typed,
coded property = the concept's SNOMED CT code from the synonym table, or a local ``99MEDSAM3`` code when none
exists), and names the algorithm (Medical SAM3, its version and the model) in each segment's algorithm
identification. Built with highdicom (the ``dicom`` extra) so the IOD rules live in a maintained library, not here.

Frame ``k`` of the label map belongs to source file ``metadata["dicom_files"][k]`` (the DICOM reader keeps the
files in slice order), so a series with missing slices still maps each frame to the image it was computed from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from medsam3_core import __version__
from medsam3_core.io.atomic import atomic_path
from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.prompts import LOCAL_SCHEME, Code, coded_concept, load_synonyms
from medsam3_core.segmenter import SegmentInfo

__all__ = ["write_dicom_seg", "check_seg_source", "ALGORITHM_NAME"]

ALGORITHM_NAME = "Medical SAM3"
_MANUFACTURER = "Medical SAM3 for 3D Slicer"


def check_seg_source(source: Volume) -> None:
    """Refuse, right after reading and before any model runs, an input a DICOM SEG cannot be written for."""
    if "dicom_files" not in source.metadata:
        raise InputError("--dicom-seg needs a DICOM series as input.")
    if not source.metadata.get("frame_of_reference_uid"):
        raise InputError(
            "The DICOM series has no FrameOfReferenceUID (0020,0052), which a DICOM SEG needs to lie on the images; "
            "add it to the series or leave out --dicom-seg."
        )


def _source_datasets(source: Volume) -> list[Any]:
    """The source images, one per label-map slice, checked against the volume they were read into."""
    import pydicom

    files = source.metadata.get("dicom_files")
    if not files:
        raise InputError("A DICOM SEG can only be written for a DICOM series input (the input was not DICOM).")
    if len(files) != source.shape[0] or source.is_rgb:
        raise InputError(
            f"DICOM SEG export needs one single-frame greyscale image per slice; this series has {len(files)} "
            f"file(s) for {source.shape[0]} slice(s) (multi-frame or colour input)."
        )
    datasets = []
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as err:
            raise InputError(f"Cannot re-read the source image {path} for the DICOM SEG ({err}).") from None
    rows, cols = source.shape[1:]
    for ds in datasets:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(
                f"Source image {ds.filename} is {ds.Rows}x{ds.Columns}, not {rows}x{cols} like the rest of the series."
            )
        _complete_geometry(ds, source)
    return datasets


def _complete_geometry(ds: Any, source: Volume) -> None:
    """Fill in or refuse the geometry attributes a SEG copies from its source images.

    * FrameOfReferenceUID (0020,0052) ties the SEG's frame positions to the patient. A new UID would declare a new,
      unrelated coordinate system (the standard gives no spatial relation between two frames of reference), so
      the segmentation would no longer be known to lie on the images; highdicom requires it too. A series without
      it is refused with a message naming the attribute.
    * SliceThickness is often absent in series written by research tools. The SEG's pixel measures need one; the
      distance between slice positions (what the reader measured as the spacing along k) is used then, which is the
      thickness of contiguous slices.
    """
    if not str(ds.get("FrameOfReferenceUID", "")).strip():
        raise InputError(
            f"The source image {Path(ds.filename).name} has no FrameOfReferenceUID (0020,0052), which a DICOM SEG "
            "needs to lie on the images; add it to the series or write labels.nii.gz only."
        )
    if not ds.get("SliceThickness"):
        ds.SliceThickness = f"{source.spacing[2]:.6g}"


def _coded(code: Code) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _description(number: int, segment: SegmentInfo, codes_: tuple[Code, Code], version: str, model: str) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    category, kind = codes_
    parameters = {"prompt": segment.prompt[:64], "concept": (segment.concept or segment.prompt)[:64]}
    if model:
        parameters["model"] = model[:64]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, version=version, family=codes.cid7162.ArtificialIntelligence, parameters=parameters
    )
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=(segment.prompt.strip() or segment.concept)[:64],
        segmented_property_category=_coded(category),
        segmented_property_type=_coded(kind),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def write_dicom_seg(
    labelmap: Volume,
    segments: Sequence[SegmentInfo],
    source: Volume,
    path: Union[str, Path],
    *,
    algorithm_version: Optional[str] = None,
    model: str = "",
    synonyms_file: Union[None, str, Path] = None,
    series_description: str = "Medical SAM3 segmentation",
) -> Path:
    """Write ``labelmap`` (label ``segments[n].label`` → segment ``n + 1``) as a DICOM SEG referencing ``source``.

    Args:
        labelmap: the result's label map, on exactly the grid of ``source``.
        segments: one entry per prompt; empty segments are still described, so segment numbers match prompts.
        source: the volume read from the DICOM series (carries ``metadata["dicom_files"]``).
        path: output file (written atomically).
        algorithm_version: recorded as the algorithm version; defaults to this package's version.
        model: model description (``SegmentationResult.model``), stored as an algorithm parameter.
        synonyms_file: the user's extra synonym table, so their codes are used too.

    Raises:
        InputError: the input was not a DICOM series, or the label map is not on its grid.
    """
    try:
        import highdicom as hd
    except ImportError:
        raise InputError("DICOM SEG export needs highdicom: pip install 'medsam3[dicom]'.") from None

    if not labelmap.same_geometry(source):
        raise InputError("The label map does not lie on the grid of the DICOM series it should reference.")
    if not segments:
        raise InputError("Nothing to write: a DICOM SEG needs at least one segment.")
    datasets = _source_datasets(source)
    table = load_synonyms(synonyms_file)
    version = algorithm_version or __version__

    # Renumber labels to consecutive segment numbers 1..N in prompt order (the SEG IOD requires it).
    lut = np.zeros(int(max(int(labelmap.array.max(initial=0)), max(s.label for s in segments))) + 1, np.uint8)
    for number, segment in enumerate(segments, start=1):
        lut[segment.label] = number
    frames = lut[np.asarray(labelmap.array).astype(np.int64)]
    coded = [coded_concept(s.concept or s.prompt, table) for s in segments]
    descriptions = [_description(n, s, c, version, model) for n, (s, c) in enumerate(zip(segments, coded), start=1)]

    first = datasets[0]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(first.get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=version,
        device_serial_number="0",
        series_description=series_description[:64],
        content_label="MEDSAM3",
        content_description="Text-prompted segmentation"[:64],
        omit_empty_frames=bool(frames.any()),
    )
    if any(kind.scheme == LOCAL_SCHEME for _, kind in coded):
        _declare_local_scheme(seg)
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
        _verify_seg(tmp, seg, path.name)
    return path


def _verify_seg(tmp: Path, seg: Any, name: str) -> None:
    """Read the written SEG back: it must parse and carry all of its frames' pixel data."""
    import pydicom

    from medsam3_core.io.verify import short_write_error

    try:
        written = pydicom.dcmread(tmp)
        complete = len(written.PixelData) == len(seg.PixelData)
    except Exception as err:  # pydicom raises many types for a cut-off file
        raise short_write_error(name, str(err) or type(err).__name__) from None
    if not complete:
        raise short_write_error(name, "pixel data cut short")


def _declare_local_scheme(seg: Any) -> None:
    """Identify the private ``99MEDSAM3`` coding scheme, as PS3.3 C.12.1.1.3 asks for local schemes."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "Medical SAM3 free-text concepts"
    item.CodingSchemeResponsibleOrganization = "Medical SAM3 for 3D Slicer"
    existing = list(seg.get("CodingSchemeIdentificationSequence", []))
    seg.CodingSchemeIdentificationSequence = existing + [item]
