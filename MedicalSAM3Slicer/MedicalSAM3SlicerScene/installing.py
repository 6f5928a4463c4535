"""Slicer's own installers, handed to the Slicer-free planner (``MedicalSAM3SlicerLib.dependencies``), and the
environment of the local server child.

Like Slicer's peers: torch through the PyTorch extension's ``PyTorchUtils`` when that extension is installed (it
picks the CUDA build for the driver), other packages through ``slicer.pydeps.pip_ensure`` (Slicer 5.11+; it installs
only what is unsatisfied and logs who asked) or ``slicer.util.pip_install``.
"""

import contextlib
import os
from typing import Callable, Optional

import slicer
from slicer.i18n import tr as _

from MedicalSAM3SlicerLib.dependencies import engine_folder, ensure_dependencies

__all__ = ["ensureDependencies", "serverEnvironment"]


def _pipEnsure() -> Optional[Callable]:
    """``pip_ensure`` of ``slicer.pydeps`` (its released home, 5.11+) or of ``slicer.packaging`` (where some builds
    put it), taking ``packaging`` requirement objects; None on Slicer versions without it."""
    owner = next((o for o in (getattr(slicer, n, None) for n in ("pydeps", "packaging")) if hasattr(o, "pip_ensure")),
                 None)
    if owner is None:
        return None
    from packaging.requirements import Requirement

    return lambda specs: owner.pip_ensure([Requirement(s) for s in specs], requester="MedicalSAM3")


def _torchInstaller() -> Optional[Callable]:
    if not hasattr(slicer.modules, "pytorchutils"):
        return None
    import PyTorchUtils

    torchLogic = PyTorchUtils.PyTorchUtilsLogic()

    def install(spec: str) -> None:
        if not torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=spec[len("torch"):]):
            raise RuntimeError(_("the PyTorch extension did not install torch"))

    return install


def ensureDependencies(moduleFile: str, remote: bool, askConfirmation: bool, missingOf: Callable) -> None:
    """Bundled engine on ``sys.path``, then the missing packages after asking; raises ``InstallError``."""

    def confirm(listing: str) -> bool:
        return slicer.util.confirmOkCancelDisplay(_(
            "Medical SAM3 needs these Python packages, which will be downloaded and installed into Slicer "
            "(this can take several minutes):\n\n{listing}").format(listing=listing), _("Install dependencies"))

    with slicer.util.WaitCursor() if hasattr(slicer.util, "WaitCursor") else contextlib.nullcontext():
        ensure_dependencies(remote, moduleFile, confirm if askConfirmation else None, slicer.util.pip_install,
                            pip_ensure=_pipEnsure(), install_torch=_torchInstaller(), missing_of=missingOf)


def serverEnvironment(moduleFile: str) -> dict:
    """Slicer's startup environment (the ``PythonSlicer`` launcher sets up Python itself) plus the engine's folder."""
    env = dict(slicer.util.startupEnvironment())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(engine_folder(moduleFile)), env.get("PYTHONPATH")) if p)
    return env
