"""What travels between the client and the server: compressed ``.npz`` voxels plus plain JSON, strictly checked.

Why not pickle (``torch.save``, ``np.save(allow_pickle=True)``): unpickling runs code chosen by the sender, so a
server that unpickles uploads executes whatever any client sends. Arrays therefore travel as an ``.npz`` archive
(zip of ``.npy`` files, numeric dtypes only, loaded with ``allow_pickle=False``), everything else as JSON.

Every decoder here assumes hostile input. Before any voxel is decompressed it checks the zip's member names, the
declared uncompressed sizes (a zip bomb is refused before it inflates) and the ``.npy`` header's dtype and shape;
geometry must be finite with positive spacing and a non-degenerate direction matrix; prompts and options are
checked field by field. Failures raise :class:`~medsam3_core.errors.InputError` with one line saying what was wrong,
which the server turns into HTTP 422.

Upload: :func:`encode_volume` → ``(npz bytes, header dict)``; :func:`decode_request` checks both and rebuilds the
:class:`~medsam3_core.io.geometry.Volume`, prompts and :class:`~medsam3_core.segmenter.SegmentOptions`.
Download: :func:`encode_result` → npz bytes holding the label map, the optional confidence map and the JSON report;
:func:`decode_result` rebuilds the :class:`~medsam3_core.segmenter.SegmentationResult` on the caller's own volume
geometry, so the label map lies on exactly the grid that was sent.
"""

from __future__ import annotations

import functools
import io
import json
import math
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.segmenter import THRESHOLD_SOURCES, ObjectInfo, SegmentationResult, SegmentInfo, SegmentOptions

__all__ = [
    "WIRE_VERSION",
    "JobRequest",
    "encode_volume",
    "encode_prompt_request",
    "decode_request",
    "encode_result",
    "decode_result",
    "read_npz",
    "MAX_PROMPTS",
    "MAX_PROMPT_CHARS",
    "WIRE_METADATA_KEYS",
]

WIRE_VERSION = 1
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 200
MAX_BATCH_SIZE = 64
MAX_MEMORY_SIZE = 64
_MAX_METADATA_STRING = 256
# Volume.metadata keys inference reads (preprocess: the DICOM window for "auto" windowing). Nothing else is sent:
# file paths, UIDs and descriptions identify the patient and the client's disk, and the server needs none of them.
WIRE_METADATA_KEYS = ("window",)
# Dtypes a scan or a label map can have; anything else (object, strings, structured, complex) is refused.
_VOXEL_DTYPES = {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
_NPY_HEADER_LIMIT = 4096
_INFLATE_CHUNK = 8 * 2**20

# The JSON type of every SegmentOptions field; a test keeps this table in step with the dataclass.
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "threshold": (type(None), int, float),  # null or absent: the server model's recommended threshold
    "window": (type(None), str, list),
    "slice_axis": (str,),
    "mode": (type(None), str),  # null or absent: the server model's recommended mode
    "batch_size": (int,),
    "cleanup": (bool,),
    "memory_size": (int,),
    "confidence_map": (bool,),
    "clip_length": (type(None), int),
    "clip_fusion": (str,),
}


@dataclass
class JobRequest:
    """A validated job: what the server hands to its segmenter."""

    volume: Volume
    prompts: list[str]
    options: SegmentOptions
    concepts: Optional[list[str]] = None


# -- arrays --------------------------------------------------------------------------------------------------------
def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{name: np.ascontiguousarray(a) for name, a in arrays.items()})
    return buf.getvalue()


def read_npz(
    data: Union[bytes, BinaryIO],
    *,
    required: Sequence[str],
    optional: Sequence[str] = (),
    max_elements: int,
    what: str,
    check_header: Optional[Callable[[str, tuple[int, ...], np.dtype], None]] = None,
) -> dict[str, np.ndarray]:
    """Decode an ``.npz`` archive (bytes or a seekable binary file) without pickle, refusing unexpected members,
    dtypes and oversized arrays.

    Everything that decides the memory an array needs is checked *before* a byte of it is decompressed: the ``.npy``
    header's dtype and shape (``max_elements`` for every array, and ``check_header(name, shape, dtype)`` for the
    caller's own rules, e.g. the exact voxel limit of a grey or RGB volume) and the zip's declared uncompressed size.
    The data is then inflated in chunks straight into one array of exactly that size, with a hard cap: a member that
    holds more (or less) than its header declares is refused, so a small hostile upload cannot expand into
    gigabytes and no intermediate copy of the decompressed bytes is ever made.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
        members = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InputError(f"The {what} is not a valid .npz archive ({exc}).") from None
    names = {name[: -len(".npy")] if name.endswith(".npy") else name: name for name in members}
    missing = [n for n in required if n not in names]
    unexpected = sorted(set(names) - set(required) - set(optional))
    if missing or unexpected:
        raise InputError(
            f"The {what} must contain the arrays {list(required)}"
            + (f" (optionally {list(optional)})" if optional else "")
            + f"; got {sorted(names)}."
        )
    arrays = {}
    for name, member in names.items():
        info = members[member]
        try:
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=_NPY_HEADER_LIMIT)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=_NPY_HEADER_LIMIT)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                if dtype.str not in _VOXEL_DTYPES and dtype.newbyteorder("<").str not in _VOXEL_DTYPES:
                    raise InputError(
                        f"Array {name!r} in the {what} has dtype {dtype}; only numeric dtypes are accepted."
                    )
                count = math.prod(shape)
                if count > max_elements:
                    raise InputError(
                        f"Array {name!r} in the {what} has {count} elements, more than this server accepts "
                        f"({max_elements}); crop or downsample the volume."
                    )
                if check_header is not None:
                    check_header(name, tuple(shape), dtype)
                expected = count * dtype.itemsize + f.tell()
                if info.file_size != expected:
                    more = "more" if info.file_size > expected else "less"
                    raise InputError(f"Array {name!r} in the {what} declares {more} data than its shape holds.")
                arrays[name] = _inflate(f, shape, fortran, dtype)
        except InputError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
            raise InputError(f"Array {name!r} in the {what} is corrupt ({exc}).") from None
    return arrays


def _inflate(f: BinaryIO, shape: tuple[int, ...], fortran: bool, dtype: np.dtype) -> np.ndarray:
    """The array data of an open ``.npy`` member, read in chunks into one preallocated array (native byte order)."""
    flat = np.empty(math.prod(shape), dtype=dtype)
    view = memoryview(flat.view(np.uint8))
    filled = 0
    while filled < len(view):
        n = f.readinto(view[filled : filled + _INFLATE_CHUNK])
        if not n:
            raise ValueError("truncated array data")
        filled += n
    if f.read(1):
        raise ValueError("more data than the shape holds")
    if not dtype.isnative:
        flat = flat.byteswap().view(dtype.newbyteorder("="))
    return flat.reshape(shape, order="F" if fortran else "C")


# -- upload --------------------------------------------------------------------------------------------------------
def _json_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``Volume.metadata`` that inference uses (:data:`WIRE_METADATA_KEYS`), as plain JSON values."""

    def ok(value: Any) -> bool:
        if isinstance(value, (bool, int)) or value is None:
            return True
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, str):
            return len(value) <= _MAX_METADATA_STRING
        if isinstance(value, (list, tuple)):
            return len(value) <= 16 and all(isinstance(v, (int, float, str)) and ok(v) for v in value)
        return False

    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in metadata.items()
        if key in WIRE_METADATA_KEYS and ok(value)
    }


def encode_volume(
    volume: Volume, prompts: Sequence[str], options: SegmentOptions, concepts: Optional[Sequence[str]] = None
) -> tuple[bytes, dict[str, Any]]:
    """The two parts of a job upload: ``.npz`` voxel bytes and a JSON-ready header (geometry, prompts, options)."""
    header: dict[str, Any] = {
        "wire_version": WIRE_VERSION,
        "geometry": {
            "spacing": list(volume.spacing),
            "origin": list(volume.origin),
            "direction": np.asarray(volume.direction, dtype=float).tolist(),
        },
        "modality": volume.modality,
        "metadata": _json_metadata(volume.metadata),
        **encode_prompt_request(prompts, options, concepts),
    }
    return _npz_bytes({"array": volume.array}), header


def encode_prompt_request(
    prompts: Sequence[str], options: SegmentOptions, concepts: Optional[Sequence[str]] = None
) -> dict[str, Any]:
    """What a job asks, apart from the volume: ``prompts``, ``options`` and, when given, ``concepts`` (part of a job
    upload's header, and the whole body of a job on a volume session)."""
    request: dict[str, Any] = {
        "prompts": list(prompts),
        # no threshold is sent as none at all, which servers of every version read as "their default"
        "options": {k: v for k, v in options.to_dict().items() if not (k == "threshold" and v is None)},
    }
    if concepts is not None:
        request["concepts"] = list(concepts)
    return request


def _finite_vector(value: Any, length: int, name: str) -> list[float]:
    if (
        not isinstance(value, list)
        or len(value) != length
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise InputError(f"geometry.{name} must be a list of {length} finite numbers.")
    return [float(v) for v in value]


def _geometry(header: Mapping[str, Any]) -> tuple[list[float], list[float], np.ndarray]:
    geometry = header.get("geometry")
    if not isinstance(geometry, dict) or set(geometry) != {"spacing", "origin", "direction"}:
        raise InputError("The request needs geometry = {spacing, origin, direction}.")
    spacing = _finite_vector(geometry["spacing"], 3, "spacing")
    origin = _finite_vector(geometry["origin"], 3, "origin")
    rows = geometry["direction"]
    if not isinstance(rows, list) or len(rows) != 3:
        raise InputError("geometry.direction must be a 3×3 list of lists.")
    direction = np.array([_finite_vector(r, 3, "direction row") for r in rows])
    if any(s <= 0 for s in spacing):
        raise InputError(f"geometry.spacing must be positive, got {spacing}.")
    norms = np.linalg.norm(direction, axis=0)
    if not np.allclose(norms, 1.0, atol=1e-3) or abs(np.linalg.det(direction)) < 1e-3:
        raise InputError("geometry.direction must have unit, linearly independent columns (the i, j, k axes).")
    return spacing, origin, direction


def _prompts(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PROMPTS:
        raise InputError(f"{name} must be a list of 1 to {MAX_PROMPTS} text prompts.")
    for prompt in value:
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"Each entry of {name} must be non-empty text of at most {MAX_PROMPT_CHARS} characters.")
    return list(value)


def _options(value: Any) -> SegmentOptions:
    if not isinstance(value, dict):
        raise InputError("options must be a JSON object.")
    unknown = sorted(set(value) - set(_OPTION_TYPES))
    if unknown:
        raise InputError(f"Unknown option(s) {unknown}; this server knows {sorted(_OPTION_TYPES)}.")
    for key, item in value.items():
        allowed = _OPTION_TYPES[key]
        if not isinstance(item, allowed) or (isinstance(item, bool) and bool not in allowed):
            raise InputError(f"Option {key!r} has the wrong type ({type(item).__name__}).")
    window = value.get("window")
    if isinstance(window, list) and (
        len(window) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
    ):
        raise InputError("Option 'window' must be a preset name or [centre, width].")
    if (isinstance(window, str) and window.strip().lower() not in ("", "auto")) or isinstance(window, list):
        from medsam3_core.engine.preprocess import parse_window  # the engine's own rule: preset, "C,W", width > 0

        parse_window(window)
    options = SegmentOptions.from_dict(value)  # range checks (threshold, mode, axis …) live in SegmentOptions
    if options.batch_size > MAX_BATCH_SIZE or options.memory_size > MAX_MEMORY_SIZE:
        raise InputError(f"batch_size and memory_size are limited to {MAX_BATCH_SIZE} on this server.")
    return options


def decode_request(header_json: str, volume_npz: Union[bytes, BinaryIO], *, max_voxels: int) -> JobRequest:
    """Validate a job upload and rebuild its parts; raises :class:`InputError` naming the first problem.

    The JSON header is checked completely (geometry, prompts, every option) before the volume is decompressed, so
    a job that would fail later is refused at submission and a bad header costs no memory.
    """
    try:
        header = json.loads(header_json, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"The request header is not valid JSON ({exc}).") from None
    if not isinstance(header, dict):
        raise InputError("The request header must be a JSON object.")
    if header.get("wire_version") != WIRE_VERSION:
        raise InputError(
            f"Client and server speak different protocol versions ({header.get('wire_version')} vs {WIRE_VERSION}); "
            "install the same medsam3 version on both."
        )
    spacing, origin, direction = _geometry(header)
    modality = header.get("modality")
    if modality is not None and (not isinstance(modality, str) or len(modality) > 16):
        raise InputError("modality must be a short string such as 'CT' or 'MR', or null.")
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict) or _json_metadata(metadata) != metadata:
        raise InputError(f"metadata may only hold {list(WIRE_METADATA_KEYS)} as numbers or short strings.")
    prompts = _prompts(header.get("prompts"), "prompts")
    concepts = header.get("concepts")
    if concepts is not None:
        concepts = _prompts(concepts, "concepts")
        if len(concepts) != len(prompts):
            raise InputError("concepts must have one entry per prompt.")
    options = _options(header.get("options", {}))

    array = read_npz(volume_npz, required=["array"], max_elements=max_voxels * 3, what="volume upload",
                     check_header=functools.partial(_check_volume_header, max_voxels=max_voxels))["array"]
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError("The volume contains NaN or infinite values.")
    volume = Volume(array, tuple(spacing), tuple(origin), direction, modality, dict(metadata))
    return JobRequest(volume, prompts, options, concepts)


def _check_volume_header(name: str, shape: tuple[int, ...], dtype: np.dtype, *, max_voxels: int) -> None:
    """The volume's declared shape, before it is decompressed: grey ``(K, J, I)`` or RGB ``(1, J, I, 3)``, with at
    most ``max_voxels`` voxels (an RGB image may hold three values per voxel, a grey volume only one)."""
    voxels = math.prod(shape[:3])
    rgb = len(shape) == 4 and shape[-1] == 3 and shape[0] == 1
    if not (len(shape) == 3 or rgb) or voxels == 0:
        raise InputError(f"The volume must be (K, J, I) or a (1, J, I, 3) RGB image, got shape {shape}.")
    if voxels > max_voxels:
        raise InputError(f"The volume has {voxels} voxels, more than this server accepts ({max_voxels}).")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


# -- result --------------------------------------------------------------------------------------------------------
def encode_result(result: SegmentationResult) -> bytes:
    """Label map, optional confidence map and the JSON report (as UTF-8 bytes) in one ``.npz``."""
    arrays = {
        "labelmap": result.labelmap.array,
        "report": np.frombuffer(json.dumps(result.to_report()).encode("utf-8"), dtype=np.uint8),
    }
    if result.confidence is not None:
        arrays["confidence"] = result.confidence.array
    return _npz_bytes(arrays)


def _segment(data: Mapping[str, Any]) -> SegmentInfo:
    objects = [
        ObjectInfo(
            object_id=int(o["object_id"]),
            label=int(o["label"]),
            score=float(o["score"]),
            voxels=int(o["voxels"]),
            slice_range=(int(o["slice_range"][0]), int(o["slice_range"][1])),
            slice_scores={int(k): float(v) for k, v in o.get("slice_scores", {}).items()},
        )
        for o in data.get("objects", [])
    ]
    slice_range = data.get("slice_range")
    return SegmentInfo(
        prompt=str(data["prompt"]),
        concept=str(data["concept"]),
        label=int(data["label"]),
        voxels=int(data["voxels"]),
        volume_ml=float(data["volume_ml"]),
        score=float(data["score"]),
        slice_range=None if slice_range is None else (int(slice_range[0]), int(slice_range[1])),
        objects=objects,
    )


def decode_result(data: bytes, volume: Volume) -> SegmentationResult:
    """Rebuild a :class:`SegmentationResult` from :func:`encode_result` bytes on the geometry of ``volume``."""
    arrays = read_npz(
        data, required=["labelmap", "report"], optional=["confidence"], max_elements=2**34, what="server result"
    )
    try:
        report = json.loads(arrays["report"].tobytes().decode("utf-8"))
        segments = [_segment(s) for s in report["segments"]]
        options = SegmentOptions.from_dict(report["options"]) if report.get("options") else None
        labelmap = volume.with_array(arrays["labelmap"], modality=None)
        confidence = volume.with_array(arrays["confidence"], modality=None) if "confidence" in arrays else None
        source = report.get("threshold_source", "user")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise InputError(f"The server's result does not fit the uploaded volume ({exc}).") from None
    return SegmentationResult(
        labelmap=labelmap,
        segments=segments,
        confidence=confidence,
        timings={str(k): float(v) for k, v in report.get("timings", {}).items()},
        options=options,
        model=str(report.get("model", "")),
        warnings=[str(w) for w in report.get("warnings", [])],
        threshold_source=source if source in THRESHOLD_SOURCES else "user",
    )
