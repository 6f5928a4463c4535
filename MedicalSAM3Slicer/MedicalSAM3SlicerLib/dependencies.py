"""What the module needs in Slicer's Python, what is missing, and the pip commands that would install it.

This file only *plans*: it finds missing or too-old packages without importing them (importing torch into Slicer's
process would cost seconds and GPU memory for nothing: local runs happen in a child process) and turns them into
``pip install`` argument strings. The module asks the user for consent and runs them with
``slicer.util.pip_install``. Rules learnt from other Slicer extensions:

* never let pip replace packages Slicer ships (numpy, SimpleITK …): the core is installed with ``--no-deps`` and
  each of its dependencies only when it cannot be imported at all;
* torch comes first and, with an NVIDIA GPU present, from the PyTorch CUDA wheel index matching the driver;
* every version requirement lives in one place, :data:`REQUIREMENTS`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = [
    "Requirement",
    "REQUIREMENTS",
    "InstallError",
    "missing_requirements",
    "nvidia_cuda_version",
    "torch_index_url",
    "install_commands",
    "core_source",
]

TORCH_INDEX = "https://download.pytorch.org/whl"
#: CUDA wheel flavours of PyTorch, newest first, with the minimum driver CUDA version each needs.
TORCH_CUDA_FLAVOURS = (("cu130", (13, 0)), ("cu128", (12, 8)), ("cu126", (12, 6)), ("cu118", (11, 8)))


@dataclass(frozen=True)
class Requirement:
    """A Python package the module needs: import name, pip name, minimum version, and why (shown to the user)."""

    module: str
    distribution: str
    minimum: str = ""
    below: str = ""
    purpose: str = ""
    local_only: bool = False

    @property
    def spec(self) -> str:
        parts = [f">={self.minimum}"] if self.minimum else []
        parts += [f"<{self.below}"] if self.below else []
        return self.distribution + ",".join(parts)


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", "torch", "2.4", purpose="runs the model on this computer", local_only=True),
    Requirement("transformers", "transformers", "5.23", "5.24", "SAM3 model classes", local_only=True),
    Requirement("safetensors", "safetensors", "0.4", purpose="reads model weights", local_only=True),
    Requirement("medsam3_core", "medsam3", "0.1", purpose="Medical SAM3 engine and remote client"),
    Requirement("scipy", "scipy", "1.11", purpose="label map clean-up", local_only=True),
    Requirement("nibabel", "nibabel", "5.0", purpose="NIfTI support of the engine", local_only=True),
    Requirement("pydicom", "pydicom", "2.4", purpose="DICOM support of the engine", local_only=True),
    Requirement("tqdm", "tqdm", "4.60", purpose="progress display of the engine", local_only=True),
    Requirement("PIL", "pillow", "10", purpose="2D image support of the engine", local_only=True),
    Requirement("httpx", "httpx", "0.27", purpose="talks to a remote Medical SAM3 server"),
)


class InstallError(RuntimeError):
    """Installing dependencies failed or was declined; ``restart_required`` asks the user to restart Slicer."""

    def __init__(self, message: str, restart_required: bool = False) -> None:
        super().__init__(message)
        self.restart_required = restart_required


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def _installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(
    remote: bool,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
    version_of: Callable[[str], Optional[str]] = _installed_version,
) -> list[Requirement]:
    """Requirements of a local (``remote=False``) or remote run that are absent or outside their version range."""
    missing = []
    for req in REQUIREMENTS:
        if remote and req.local_only:
            continue
        if find_spec(req.module) is None:
            missing.append(req)
            continue
        version = version_of(req.distribution)
        if version is None:  # importable from a source tree (developer checkout): accept as is
            continue
        too_old = bool(req.minimum) and _version_tuple(version) < _version_tuple(req.minimum)
        too_new = bool(req.below) and _version_tuple(version) >= _version_tuple(req.below)
        if too_old or too_new:
            missing.append(req)
    return missing


def nvidia_cuda_version(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Optional[tuple[int, int]]:
    """CUDA version the NVIDIA driver supports (from ``nvidia-smi``), or None without an NVIDIA GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = run(["nvidia-smi"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", out or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def torch_index_url(cuda: Optional[tuple[int, int]]) -> str:
    """PyTorch wheel index for the driver's CUDA version (newest flavour it can run), CPU wheels otherwise."""
    if cuda is not None:
        for flavour, needed in TORCH_CUDA_FLAVOURS:
            if cuda >= needed:
                return f"{TORCH_INDEX}/{flavour}"
    return f"{TORCH_INDEX}/cpu"


def core_source(module_file: str) -> str:
    """What to pip-install for ``medsam3_core``: the source checkout the module sits in, else the package name.

    The extension folder lives inside the project checkout (``<root>/MedicalSAM3Slicer``), so a module added to
    Slicer from a checkout installs the matching core; a packaged extension falls back to the released package.
    """
    root = Path(module_file).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "medsam3_core").is_dir():
        return str(root)
    return next(r.spec for r in REQUIREMENTS if r.module == "medsam3_core")


def install_commands(
    missing: Sequence[Requirement], cuda: Optional[tuple[int, int]], core: str
) -> list[tuple[Requirement, list[str]]]:
    """``(requirement, pip install argument list)`` pairs (for ``slicer.util.pip_install``), in order: torch from the
    right wheel index, the core without its dependencies (so pip cannot replace Slicer's packages), then every other
    missing package. Lists rather than strings keep Windows paths with spaces or backslashes intact; the requirement
    names what failed in the user's message."""
    commands = []
    by_module = {r.module: r for r in missing}
    if "torch" in by_module:
        commands.append((by_module["torch"], [by_module["torch"].spec, "--index-url", torch_index_url(cuda)]))
    if "medsam3_core" in by_module:
        commands.append((by_module["medsam3_core"], ["--no-deps", "--upgrade", core]))
    commands += [(r, [r.spec]) for r in missing if r.module not in ("torch", "medsam3_core")]
    return commands
