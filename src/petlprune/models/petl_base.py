"""The base class of every PETL task module, apart from the PETLs themselves (models/petl.py,
models/splora.py, models/splopa.py import it from here, so none of them imports another's module)."""

from __future__ import annotations

from torch import nn

__all__ = ["PetlModule"]


class PetlModule(nn.Module):
    """Base of task modules: every parameter is task-specific, and the module starts as a zero map."""

    def init_weights(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
