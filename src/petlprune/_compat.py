"""Make ``import torchvision`` (and therefore ``import timm``) work next to a CPU-only torch.

Every Linux torchvision wheel on the package registry is a CUDA build. Installed next to the CPU
build of torch, its compiled extension cannot load, and importing torchvision fails with
``RuntimeError: operator torchvision::nms does not exist`` because its Python side registers fake
kernels for ops whose schemas the extension would have defined. Defining those two schemas ourselves
(before torchvision is first imported) lets everything timm needs work: models and transforms.
torchvision's C++ ops (nms, roi_align, image decoding) stay unavailable; we decode images with PIL.

Where the extension loads (any matching CUDA/CPU pair, e.g. on a GPU node) this does nothing.

The step runs lazily: ``install()`` (called by ``import petlprune``) puts a finder on
``sys.meta_path`` that calls ``ensure_torchvision()`` the moment torchvision is first imported, by
anyone. So ``petlprune`` stages that never touch a model (planning, data generation) do not pay
the ~5 s import of torch + torchvision, and a notebook that imports timm after petlprune is covered.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__all__ = ["install", "ensure_torchvision", "torchvision_extension_loadable", "COMPAT_STATE"]

# Set once by ensure_torchvision(): "native" (extension loaded, nothing done), "shimmed" (schemas
# defined here), "absent" (torchvision not installed) or "already-imported".
COMPAT_STATE: dict[str, str] = {}
_LIBRARY = None  # keep the torch.library.Library alive: its definitions vanish with it


def torchvision_extension_loadable() -> bool:
    """Return True if torchvision's compiled ``_C`` extension loads with the installed torch."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    import torch

    pkg_dir = Path(spec.origin).parent
    candidates = sorted(pkg_dir.glob("_C*.so")) + sorted(pkg_dir.glob("_C*.pyd"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(str(candidates[0]))
    except (OSError, RuntimeError):
        return False
    return True


def ensure_torchvision() -> str:
    """Define torchvision's op schemas if (and only if) its extension cannot load.

    Returns:
        The state: ``"native"``, ``"shimmed"``, ``"absent"`` or ``"already-imported"``.
    """
    global _LIBRARY
    if "state" in COMPAT_STATE:
        return COMPAT_STATE["state"]
    # The look-ups below consult sys.meta_path: take the hook out first so it cannot re-enter.
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionHook)]
    if "torchvision" in sys.modules:
        state = "already-imported"
    elif importlib.util.find_spec("torchvision") is None:
        state = "absent"
    elif torchvision_extension_loadable():
        state = "native"
    else:
        import torch

        _LIBRARY = torch.library.Library("torchvision", "DEF")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define(
            "qnms(Tensor dets, Tensor scores, float iou_threshold, float scale, int zero_point) -> Tensor"
        )
        state = "shimmed"
    COMPAT_STATE["state"] = state
    return state


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs ``ensure_torchvision()`` just before the first ``import torchvision``; finds nothing itself."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 - importlib protocol
        if fullname == "torchvision":
            ensure_torchvision()  # removes this hook: it runs once
        return None


def install() -> None:
    """Arrange for ``ensure_torchvision()`` to run before torchvision is first imported."""
    if "torchvision" in sys.modules:
        ensure_torchvision()
    elif not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())
