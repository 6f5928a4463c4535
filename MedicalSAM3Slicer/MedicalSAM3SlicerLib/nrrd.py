"""Minimal NRRD reader/writer for the hand-over between Slicer and the core's command line.

Why our own: the module must not import ITK-based readers of the core into Slicer's process, and Slicer's own
``saveNode``/``loadLabelVolume`` would add scene nodes and storage side effects. The format is simple: a text header
(``sizes`` fastest axis first, ``space directions`` = the i, j, k axis vectors scaled by spacing, ``space origin``)
and the raw or gzip-compressed voxels. Geometry is exchanged as Slicer's 4×4 IJK→RAS matrix; the file itself uses
LPS like Slicer and ITK, and a RAS-space file is read correctly too.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["write_nrrd", "read_nrrd"]

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_TYPE_NAMES = {
    "int8": "int8", "signed char": "int8", "char": "int8",
    "uint8": "uint8", "uchar": "uint8", "unsigned char": "uint8",
    "int16": "int16", "short": "int16", "short int": "int16", "signed short": "int16",
    "uint16": "uint16", "ushort": "uint16", "unsigned short": "uint16",
    "int32": "int32", "int": "int32", "signed int": "int32",
    "uint32": "uint32", "uint": "uint32", "unsigned int": "uint32",
    "int64": "int64", "longlong": "int64", "long long": "int64",
    "uint64": "uint64", "ulonglong": "uint64", "unsigned long long": "uint64",
    "float": "float32", "double": "float64",
}
_WRITE_TYPE = {"int8": "int8", "uint8": "uint8", "int16": "int16", "uint16": "uint16", "int32": "int32",
               "uint32": "uint32", "int64": "int64", "uint64": "uint64", "float32": "float", "float64": "double"}
_SPACES = {"left-posterior-superior": "LPS", "lps": "LPS", "right-anterior-superior": "RAS", "ras": "RAS"}


def _vector(values: np.ndarray) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def write_nrrd(path: Union[str, Path], array: np.ndarray, ijk_to_ras: np.ndarray, compress: bool = True) -> Path:
    """Write a ``[k, j, i]`` scalar array with the given IJK→RAS matrix as an attached-data NRRD (LPS space)."""
    array = np.ascontiguousarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_nrrd expects a 3D [k, j, i] array, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    type_name = _WRITE_TYPE.get(array.dtype.name)
    if type_name is None:
        raise ValueError(f"NRRD output of {array.dtype} voxels is not supported")
    ijk_to_lps = _LPS_FROM_RAS @ np.asarray(ijk_to_ras, dtype=float).reshape(4, 4)[:3, :]
    header = [
        "NRRD0004",
        "# written by MedicalSAM3Slicer",
        f"type: {type_name}",
        "dimension: 3",
        "space: left-posterior-superior",
        f"sizes: {array.shape[2]} {array.shape[1]} {array.shape[0]}",
        "space directions: " + " ".join(_vector(ijk_to_lps[:, axis]) for axis in range(3)),
        "kinds: domain domain domain",
        "endian: little",
        f"encoding: {'gzip' if compress else 'raw'}",
        "space origin: " + _vector(ijk_to_lps[:, 3]),
    ]
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    from medsam3_core.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(("\n".join(header) + "\n\n").encode("ascii"))
        handle.write(gzip.compress(data, compresslevel=1) if compress else data)
    return Path(path)


def read_nrrd(path: Union[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read an attached-data 3D scalar NRRD; returns ``(array[k, j, i], ijk_to_ras 4×4)``.

    Raises ``ValueError`` with the reason for files this reader does not handle (detached data, 4D, bzip2 …).
    """
    raw = Path(path).read_bytes()
    if not raw.startswith(b"NRRD"):
        raise ValueError(f"{path} is not a NRRD file")
    end = raw.find(b"\n\n")
    if end < 0:
        raise ValueError(f"{path}: NRRD header has no end")
    fields: dict[str, str] = {}
    for line in raw[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    if "data file" in fields or "datafile" in fields:
        raise ValueError(f"{path}: detached NRRD data is not supported")
    if int(fields.get("dimension", "0")) != 3:
        raise ValueError(f"{path}: only 3D scalar NRRD files are supported")
    dtype = np.dtype(_TYPE_NAMES[fields["type"].lower()])
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<" if fields.get("endian", "little") == "little" else ">")
    sizes = [int(s) for s in fields["sizes"].split()]
    encoding = fields.get("encoding", "raw").lower()
    body = raw[end + 2:]
    if encoding in ("gzip", "gz"):
        body = gzip.decompress(body)
    elif encoding != "raw":
        raise ValueError(f"{path}: NRRD encoding {encoding!r} is not supported")
    count = sizes[0] * sizes[1] * sizes[2]
    array = np.frombuffer(body[-count * dtype.itemsize:] if count else b"", dtype=dtype, count=count)
    array = array.reshape(sizes[2], sizes[1], sizes[0]).astype(dtype.newbyteorder("="))

    vectors = [[float(v) for v in group.split(",")] for group in re.findall(r"\(([^)]*)\)", fields["space directions"])]
    origin = [float(v) for v in re.findall(r"\(([^)]*)\)", fields.get("space origin", "(0,0,0)"))[0].split(",")]
    space = _SPACES.get(fields.get("space", "left-posterior-superior").lower())
    if space is None or len(vectors) != 3:
        raise ValueError(f"{path}: unsupported NRRD space {fields.get('space')!r}")
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(vectors).T
    matrix[:3, 3] = origin
    if space == "LPS":
        matrix[:3, :] = _LPS_FROM_RAS @ matrix[:3, :]
    return array, matrix
