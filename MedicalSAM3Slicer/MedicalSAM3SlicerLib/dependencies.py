"""What the module needs in Slicer's Python, what is missing, and how to install it the way Slicer's peers do.

This file plans and orchestrates; the module injects Slicer's functions (``slicer.util.pip_install``,
``slicer.pydeps.pip_ensure`` where the Slicer version has it, the PyTorch extension's installer), so all of it is
tested in plain Python. Nothing is imported to check it (importing torch into Slicer's process would cost seconds
and GPU memory for nothing: the model runs in a server child process). Rules, learnt from other Slicer extensions:

* the engine (``medsam3_core``) is never fetched from a package index: the extension ships its own copy next to the
  module (a source checkout uses the checkout), and that folder is put on ``sys.path`` and the server's
  ``PYTHONPATH``;
* torch comes from the PyTorch extension (``PyTorchUtils``: the right CUDA build for the driver) when it is
  installed, else from the PyTorch wheel index matching the driver's CUDA version;
* version ranges, never pins, in Slicer's shared site-packages, all in one place (:data:`REQUIREMENTS`);
* Slicer older than 5.10 (Python < 3.10) and Intel Macs (no recent torch: remote mode only) get one clear sentence.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
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
    "install_missing",
    "engine_folder",
    "check_platform",
    "describe_missing",
    "ensure_dependencies",
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
    Requirement("transformers", "transformers", "5.23", "6", "SAM3 model classes", local_only=True),
    Requirement("safetensors", "safetensors", "0.4", purpose="reads model weights", local_only=True),
    Requirement("fastapi", "fastapi", "0.110", purpose="the local Medical SAM3 server", local_only=True),
    Requirement("uvicorn", "uvicorn", "0.29", purpose="the local Medical SAM3 server", local_only=True),
    Requirement("multipart", "python-multipart", "0.0.9", purpose="uploads to the local server", local_only=True),
    Requirement("psutil", "psutil", "5.9", purpose="stops the local server and its processes", local_only=True),
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


def engine_folder(module_file: str) -> Path:
    """The folder holding ``medsam3_core`` for this module: the extension's bundled copy (installed next to the
    module file by the extension's CMake rules) or, for a module added to Slicer from a source checkout, the
    checkout. Raises :class:`InstallError` when neither is there: the engine is never fetched from a package index
    (the project owns no name there, and a look-alike package would run with the user's rights)."""
    here = Path(module_file).resolve().parent
    for folder in (here, here.parent):
        if (folder / "medsam3_core" / "__init__.py").is_file():
            return folder
    raise InstallError(f"The Medical SAM3 engine (medsam3_core) is missing from {here}; reinstall the extension.")



def check_platform(remote: bool, version: tuple[int, int] = sys.version_info[:2], system: str = platform.system(),
                   machine: str = platform.machine()) -> None:
    """One sentence for a Slicer that cannot run the module (too old) or cannot run the model (Intel Mac)."""
    if version < (3, 10):
        raise InstallError(f"Medical SAM3 needs 3D Slicer 5.10 or newer (Python 3.10+); this Slicer has Python "
                           f"{version[0]}.{version[1]}. Install a current Slicer from download.slicer.org.")
    if not remote and system == "Darwin" and machine.lower() in ("x86_64", "i386", "amd64"):
        raise InstallError("Recent PyTorch is not built for Intel Macs, so the model cannot run on this computer; "
                           "choose 'Remote server' and use a Medical SAM3 server on another machine.")


def describe_missing(req: Requirement, version_of: Callable[[str], Optional[str]] = _installed_version) -> str:
    """``transformers>=5.23,<6 (SAM3 model classes; 4.57 is installed)`` for the consent dialog and errors."""
    installed = version_of(req.distribution)
    return f"{req.spec} ({req.purpose}" + (f"; {installed} is installed)" if installed else ")")


def install_commands(
    missing: Sequence[Requirement], cuda: Optional[tuple[int, int]]
) -> list[tuple[Requirement, list[str]]]:
    """``(requirement, pip install argument list)`` pairs for ``slicer.util.pip_install``: torch first, from the
    wheel index for the driver's CUDA version, then each other package as a version range. Lists rather than strings
    keep Windows paths intact; the requirement names what failed in the user's message."""
    commands = [(r, [r.spec, "--index-url", torch_index_url(cuda)]) for r in missing if r.module == "torch"]
    return commands + [(r, [r.spec]) for r in missing if r.module != "torch"]


def install_missing(
    missing: Sequence[Requirement],
    pip_install: Callable[[list[str]], None],
    pip_ensure: Optional[Callable[[list[str]], None]] = None,
    install_torch: Optional[Callable[[str], None]] = None,
    cuda: Callable[[], Optional[tuple[int, int]]] = lambda: nvidia_cuda_version(),
) -> None:
    """Install ``missing``: torch through ``install_torch(spec)`` (the PyTorch extension) when given, else pip from
    the right wheel index; the rest through ``pip_ensure(specs)`` (Slicer 5.11+) when given, else one
    ``pip_install`` per package. Any failure becomes an :class:`InstallError` naming the package."""
    steps: list[tuple[Requirement, Callable[[], None]]] = []
    torch = [r for r in missing if r.module == "torch"]
    rest = [r for r in missing if r.module != "torch"]
    if torch and install_torch is not None:
        steps.append((torch[0], lambda: install_torch(torch[0].spec)))
    elif torch:
        (_req, args), = install_commands(torch, cuda())
        steps.append((torch[0], lambda: pip_install(args)))
    if rest and pip_ensure is not None:
        steps.append((rest[0] if len(rest) == 1 else Requirement("", ", ".join(r.distribution for r in rest),
                                                                 purpose="Medical SAM3's packages"),
                      lambda: pip_ensure([r.spec for r in rest])))
    else:
        steps += [(r, (lambda args=args: pip_install(args))) for r, args in install_commands(rest, None)]
    for requirement, step in steps:
        try:
            step()
        except Exception as err:  # pip fails with CalledProcessError, OSError ...; the user needs the reason
            raise InstallError(f"Installing {requirement.distribution} ({requirement.purpose}) failed: {err}. "
                               "See the Python console; check the network connection.") from err


def ensure_dependencies(
    remote: bool,
    module_file: str,
    confirm: Optional[Callable[[str], bool]],
    pip_install: Callable[[list[str]], None],
    pip_ensure: Optional[Callable[[list[str]], None]] = None,
    install_torch: Optional[Callable[[str], None]] = None,
    missing_of: Callable[[bool], list[Requirement]] = lambda remote: missing_requirements(remote),
) -> None:
    """Everything a run needs, in Slicer's order: platform check, the bundled engine on ``sys.path``, then the
    missing packages after ``confirm(listing)`` (None: do not ask). Raises :class:`InstallError` when the user
    declines, an install fails, or a restart is needed before the new packages load."""
    check_platform(remote)
    folder = str(engine_folder(module_file))
    if folder not in sys.path:
        sys.path.append(folder)
    missing = missing_of(remote)
    if not missing:
        return
    listing = "\n".join(f"  {describe_missing(r)}" for r in missing)
    if confirm is not None and not confirm(listing):
        names = ", ".join(r.distribution for r in missing)
        raise InstallError(f"Missing Python packages: {names}. Nothing was installed.")
    install_missing(missing, pip_install, pip_ensure=pip_ensure, install_torch=install_torch)
    importlib.invalidate_caches()
    still = missing_of(remote)
    if still:
        names = ", ".join(r.distribution for r in still)
        raise InstallError(f"Installed, but {names} cannot be loaded yet; restart Slicer to finish.",
                           restart_required=True)
