"""From scanner intensities to SAM3 input tensors, and from SAM3's square outputs back to the original grid.

SAM3 sees a square ``S×S`` RGB image in ``[-1, 1]`` (``S`` = 1008 for the released weights). Medical slices are
neither RGB, nor square, nor in ``[0, 255]``, so three steps happen here (the HF image processor cannot be used: it
needs torchvision, see SAM3_NOTES §0):

1. :class:`IntensityNormalizer` maps raw values to ``[0, 1]`` with a window chosen **once per volume**, so every
   slice of a scan is scaled identically (a per-slice min–max would make the same tissue look different on every
   slice and confuse both detector and tracker).
2. :class:`Letterbox` resizes with the aspect ratio preserved and pads bottom/right to the square; its
   :meth:`Letterbox.to_original` maps any square output map (full ``S×S`` or the ``S/3.5`` low-res mask grid) back
   onto the original pixel grid in a single resampling step.
3. :func:`to_model_input` replicates grey to three channels and applies SAM3's ``(x - 0.5) / 0.5``.

:func:`slice_stack` / :func:`unstack` move the anatomical slice axis to the front and back, so the engine iterates
slices without caring how the volume was acquired.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.io.modality import hounsfield_evidence

__all__ = [
    "CT_WINDOWS",
    "PERCENTILES",
    "Window",
    "IntensityNormalizer",
    "parse_window",
    "Letterbox",
    "to_model_input",
    "slice_stack",
    "unstack",
]

#: CT window presets, ``name -> (centre, width)`` in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

#: Robust intensity range for modalities without a physical scale (MR, PET, ultrasound, unknown grey).
PERCENTILES: tuple[float, float] = (0.5, 99.5)

# Above this many voxels the percentiles are estimated from an evenly strided subsample; on a 512×512×600 CT the
# exact np.percentile takes seconds and the estimate differs by far less than one grey level of the output.
_PERCENTILE_SAMPLE = 8_000_000

Window = Union[None, str, tuple[float, float]]
ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class IntensityNormalizer:
    """Maps raw intensities linearly to ``[0, 1]``: ``clip((x - low) / (high - low), 0, 1)``.

    Build it with :meth:`for_volume`, which picks ``low``/``high`` once for the whole volume. ``description`` says
    in words which rule was applied; reports show it so a user can tell why a segmentation looks as it does.
    ``inferred`` is set when the rule rests on a guess the user should hear about (an untagged scan read as CT
    because its values look like Hounsfield units): the sentence for the run's warnings.
    """

    low: float
    high: float
    description: str
    inferred: str = ""

    @classmethod
    def for_volume(cls, volume: Volume, window: Window = None) -> "IntensityNormalizer":
        """Choose the intensity range for ``volume``.

        Precedence: an explicit ``window`` (``(centre, width)``, ``"C,W"`` or a :data:`CT_WINDOWS` preset name) >
        the DICOM window in ``volume.metadata["window"]`` > the modality default (CT: soft-tissue window; 8-bit RGB:
        ``/255``; anything else: the 0.5th–99.5th percentiles of the whole volume). A volume without modality whose
        values look like Hounsfield units (:mod:`medsam3_core.io.modality`) gets the CT default, and says why.

        Raises:
            InputError: unknown preset name, malformed ``"C,W"`` text, or a width that is not positive.
        """
        if window is not None and not (isinstance(window, str) and window.strip().lower() in ("", "auto")):
            centre, width = parse_window(window)
            return cls._from_window(centre, width, f"window {_window_name(window)} (C={centre:g}, W={width:g})")
        dicom = _dicom_window(volume.metadata.get("window"))
        if dicom is not None:
            return cls._from_window(*dicom, f"DICOM window (C={dicom[0]:g}, W={dicom[1]:g})")
        modality = (volume.modality or "").upper()
        inferred = ""
        if not modality and not volume.is_rgb:
            evidence = hounsfield_evidence(volume.array)
            inferred = f"Read as CT: {evidence.reason()}." if evidence.is_ct else ""
        if (modality == "CT" or inferred) and not volume.is_rgb:
            centre, width = CT_WINDOWS["soft-tissue"]
            text = f"CT soft-tissue window (C={centre:g}, W={width:g})" + (" for a scan read as CT" if inferred else "")
            return cls(centre - width / 2.0, centre + width / 2.0, text, inferred)
        if volume.is_rgb and volume.array.dtype == np.uint8:
            return cls(0.0, 255.0, "8-bit colour, scaled by 1/255")
        low, high = _robust_range(volume.array)
        return cls(low, high, f"percentiles {PERCENTILES[0]:g}-{PERCENTILES[1]:g} of the volume ({low:g} to {high:g})")

    @classmethod
    def _from_window(cls, centre: float, width: float, description: str) -> "IntensityNormalizer":
        return cls(centre - width / 2.0, centre + width / 2.0, description)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """``values`` (any shape) as float32 in ``[0, 1]``.

        A constant volume maps to zeros, and NaN (some NIfTI files mark "outside the scan" with it) to 0, i.e.
        black, like the letterbox padding: a NaN reaching the ViT would turn every output into NaN.
        """
        span = self.high - self.low
        out = np.asarray(values, dtype=np.float32) - np.float32(self.low)
        if span <= 0:
            return np.zeros_like(out)
        out *= np.float32(1.0 / span)
        np.clip(out, 0.0, 1.0, out=out)
        return np.nan_to_num(out, copy=False, nan=0.0)


def _window_name(window: Window) -> str:
    text = window.strip().lower() if isinstance(window, str) else ""
    return text if text in CT_WINDOWS else "override"


def parse_window(window: Any) -> tuple[float, float]:
    """``(centre, width)`` from a preset name, ``"C,W"`` text or a pair of numbers."""
    if isinstance(window, str):
        text = window.strip().lower()
        if text in CT_WINDOWS:
            return CT_WINDOWS[text]
        parts = [p for p in re.split(r"[,\s]+", text) if p]
        if len(parts) != 2:
            raise InputError(
                f"Unknown window {window!r}; use one of {', '.join(CT_WINDOWS)}, or 'centre,width' such as '40,400'."
            )
        try:
            centre, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise InputError(f"Window {window!r} is not two numbers 'centre,width' such as '40,400'.") from None
    else:
        try:
            centre, width = (float(v) for v in window)
        except (TypeError, ValueError):
            raise InputError(f"Window must be a preset name or (centre, width), got {window!r}.") from None
    if not (math.isfinite(centre) and math.isfinite(width)) or width <= 0:
        raise InputError(f"Window width must be a positive number, got centre={centre:g}, width={width:g}.")
    return centre, width


def _dicom_window(value: Any) -> Optional[tuple[float, float]]:
    """The first ``(centre, width)`` of a DICOM window as a reader may store it, or ``None`` if absent/unusable.

    Accepted forms: ``(c, w)``, ``[(c1, w1), (c2, w2), …]`` (multi-valued WindowCenter/Width; the first is the
    default view) and ``{"center": c, "width": w}``. An unusable header window is ignored rather than fatal, since the
    modality default still gives a sensible image.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        value = (value.get("center", value.get("centre")), value.get("width"))
    try:
        pair = list(value)
        if pair and isinstance(pair[0], (list, tuple, np.ndarray)):
            pair = list(pair[0])
        centre, width = float(pair[0]), float(pair[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(centre) and math.isfinite(width)) or width <= 0:
        return None
    return centre, width


def _robust_range(array: np.ndarray) -> tuple[float, float]:
    flat = np.asarray(array).reshape(-1)
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: math.ceil(flat.size / _PERCENTILE_SAMPLE)]
    flat = flat[np.isfinite(flat)] if np.issubdtype(flat.dtype, np.floating) else flat
    if flat.size == 0:
        raise InputError("The image has no finite intensity values.")
    low, high = np.percentile(flat, PERCENTILES)
    return float(low), float(high)


class Letterbox:
    """Aspect-preserving resize of an ``height×width`` grid into a ``size×size`` square, padded bottom/right.

    The longer side becomes ``size``; the shorter side ``round(short * size / long)`` (at least 1). Pixel ``(y, x)`` of
    the original grid covers ``[y·sy, (y+1)·sy)`` of the square with ``sy = new_height / height`` (likewise x), and
    every method here uses exactly that mapping, so forward and inverse agree to the sub-pixel.

    With ``keep_aspect=False`` the image is instead stretched to fill the square (no padding). That is what SAM3's
    own pipelines do (the HF ``Sam3ImageProcessor`` and Meta's ``RandomResizeAPI(square=True)`` both resize straight
    to 1008×1008), so it matches what the released weights saw in training; letterboxing keeps anatomy undistorted.

    Inputs may be numpy arrays or torch tensors (returned as the same kind, on the same device), with any leading
    batch dimensions; images may carry a trailing colour axis.
    """

    def __init__(self, height: int, width: int, size: int, keep_aspect: bool = True) -> None:
        if height < 1 or width < 1 or size < 1:
            raise InputError(f"Cannot letterbox a {height}×{width} image into {size}×{size}.")
        self.height, self.width, self.size = int(height), int(width), int(size)
        self.keep_aspect = bool(keep_aspect)
        scale = self.size / max(self.height, self.width)
        self.new_height = max(1, min(self.size, round(self.height * scale))) if keep_aspect else self.size
        self.new_width = max(1, min(self.size, round(self.width * scale))) if keep_aspect else self.size
        self._grids: dict[tuple[int, str], torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"Letterbox({self.height}×{self.width} → {self.new_height}×{self.new_width} in {self.size}²)"

    # -- forward ----------------------------------------------------------------------------------------------
    def image(self, array: ArrayLike) -> ArrayLike:
        """Bilinear (antialiased when shrinking) resize of ``(…, H, W)`` or ``(…, H, W, C)`` to the padded square."""
        return self._forward(array, "bilinear")

    def mask(self, array: ArrayLike) -> ArrayLike:
        """Nearest-neighbour resize of a mask/label map ``(…, H, W)`` to the padded square (values preserved)."""
        return self._forward(array, "nearest-exact")

    def _forward(self, array: ArrayLike, mode: str) -> ArrayLike:
        tensor, restore = _as_nchw(array, (self.height, self.width))
        dtype = tensor.dtype
        work = tensor.float()
        antialias = mode == "bilinear" and (self.new_height < self.height or self.new_width < self.width)
        resized = F.interpolate(
            work,
            size=(self.new_height, self.new_width),
            mode=mode,
            antialias=antialias,
            **({"align_corners": False} if mode == "bilinear" else {}),
        )
        padded = F.pad(resized, (0, self.size - self.new_width, 0, self.size - self.new_height))
        return restore(padded if mode == "bilinear" else padded.to(dtype))

    # -- inverse ----------------------------------------------------------------------------------------------
    def to_original(self, array: ArrayLike, mode: Optional[str] = None) -> ArrayLike:
        """Map square maps ``(…, L, L)`` covering the padded square (any ``L``) back to ``(…, height, width)``.

        The valid (unpadded) region is cropped and resampled in one step (``grid_sample``), so a low-res mask map
        whose crop boundary falls between its pixels is still placed exactly. ``mode`` is ``"bilinear"`` (default for
        floating input: logits, probabilities) or ``"nearest"`` (default for bool/integer input, whose values and
        dtype are preserved). For a mask made by :meth:`mask` when upscaling, the nearest inverse is exact.
        """
        side = array.shape[-1]
        if array.ndim < 2 or array.shape[-2] != side:
            raise ValueError(f"to_original expects square maps (..., L, L), got shape {tuple(array.shape)}")
        tensor, restore = _as_nchw(array, (side, side))
        dtype = tensor.dtype
        floating = dtype.is_floating_point
        mode = mode or ("bilinear" if floating else "nearest")
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        key = (side, str(tensor.device))
        if key not in self._grids:  # the engine maps every slice of a volume through the same grid
            self._grids[key] = self._sampling_grid(side, tensor.device)
        grid = self._grids[key]
        n, c = tensor.shape[:2]
        work = tensor.reshape(n * c, 1, side, side)
        work = work if floating else work.float()
        out = F.grid_sample(
            work, grid.expand(n * c, -1, -1, -1), mode=mode, padding_mode="border", align_corners=False
        ).reshape(n, c, self.height, self.width)
        return restore(out if floating else out.round().to(dtype))

    def _sampling_grid(self, side: int, device: torch.device) -> torch.Tensor:
        """``grid_sample`` coordinates of the original pixel centres inside an ``side×side`` map of the square."""

        def axis(n_orig: int, n_resized: int) -> torch.Tensor:
            centres = (torch.arange(n_orig, device=device, dtype=torch.float64) + 0.5) * (n_resized / n_orig)
            # centre in square pixels → map pixels → normalised [-1, 1] with align_corners=False
            return (centres * (side / self.size)) * (2.0 / side) - 1.0

        gy = axis(self.height, self.new_height)
        gx = axis(self.width, self.new_width)
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (H, W, 2) with (x, y) order
        return grid.to(torch.float32)[None]

    def box_to_original(self, boxes: ArrayLike) -> ArrayLike:
        """Normalised ``x1, y1, x2, y2`` boxes in the square (``[0, 1]``) → pixel coordinates of the original grid."""
        scale_x = self.size * self.width / self.new_width
        scale_y = self.size * self.height / self.new_height
        if isinstance(boxes, torch.Tensor):
            scale = boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
            limit = boxes.new_tensor([self.width, self.height, self.width, self.height])
            return torch.minimum((boxes * scale).clamp_min(0), limit)
        scale = np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float64)
        limit = np.array([self.width, self.height, self.width, self.height], dtype=np.float64)
        return np.minimum(np.clip(np.asarray(boxes, dtype=np.float64) * scale, 0, None), limit)


def _as_nchw(array: ArrayLike, spatial: tuple[int, int]) -> tuple[torch.Tensor, Callable[[torch.Tensor], ArrayLike]]:
    """View ``(…, H, W)`` or ``(…, H, W, C)`` as ``(N, C, H, W)`` plus a function restoring the caller's layout/kind."""
    is_numpy = not isinstance(array, torch.Tensor)
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_numpy else array
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)
        was_bool = True
    else:
        was_bool = False
    shape = tuple(tensor.shape)
    if shape[-2:] == spatial:
        lead, channels_last = shape[:-2], False
        nchw = tensor.reshape(-1, 1, *spatial)
    elif len(shape) >= 3 and shape[-3:-1] == spatial:
        lead, channels_last = shape[:-3], True
        nchw = tensor.reshape(-1, *spatial, shape[-1]).permute(0, 3, 1, 2)
    else:
        raise ValueError(f"expected an array (..., {spatial[0]}, {spatial[1]}[, C]), got shape {shape}")

    def restore(out: torch.Tensor) -> ArrayLike:
        h, w = out.shape[-2:]
        if channels_last:
            out = out.permute(0, 2, 3, 1).reshape(*lead, h, w, out.shape[1])
        else:
            out = out.reshape(*lead, h, w)
        if was_bool:
            out = out.bool()
        return out.cpu().numpy() if is_numpy else out

    return nchw, restore


def to_model_input(
    slices: ArrayLike,
    letterbox: Letterbox,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """SAM3 pixel values ``(B, 3, S, S)`` in ``[-1, 1]`` from normalised slices ``(B, H, W)`` or ``(B, H, W, 3|4)``.

    Resizing happens on ``device`` (the GPU when inference runs there), grey is replicated to three channels, an
    alpha channel is dropped, and ``(x - 0.5) / 0.5`` is SAM3's own normalisation (mean = std = 0.5).
    """
    tensor = torch.as_tensor(np.asarray(slices) if not isinstance(slices, torch.Tensor) else slices)
    tensor = tensor.to(device=device or tensor.device, dtype=torch.float32)
    if tensor.ndim == 3:
        tensor = tensor[..., None]
    if tensor.ndim != 4 or tensor.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected slices (B, H, W) or (B, H, W, 3), got shape {tuple(tensor.shape)}")
    tensor = tensor[..., :3]
    square = letterbox.image(tensor)  # (B, S, S, C)
    pixels = square.permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
    return ((pixels - 0.5) / 0.5).to(dtype).contiguous()


def slice_stack(volume: Volume, axis_name: str = "axial") -> tuple[np.ndarray, int]:
    """``(slices, axis)``: a view of ``volume.array`` with the anatomical slice axis first, and that array axis.

    The axis comes from the direction matrix (:meth:`Volume.axis_for`), not from the array layout, so an MR acquired
    sagittally is still cut into axial slices when asked for axial. A 2D image (one slice, e.g. a chest X-ray whose
    plane is coronal) is always its own slice: cutting it "axially" would give 1-pixel-high strips.
    """
    axis = 0 if volume.shape[0] == 1 else volume.axis_for(axis_name)
    return np.moveaxis(volume.array, axis, 0), axis


def unstack(stack: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`slice_stack`: per-slice results ``(N, H, W[, …])`` back to the ``[k, j, i]`` layout."""
    return np.moveaxis(np.asarray(stack), 0, axis)
