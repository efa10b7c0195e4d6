"""petlprune: a reproducible comparative study of pruning for PETL-adapted vision transformers."""

from petlprune._compat import ensure_torchvision as _ensure_torchvision

# Must run before anything imports torchvision (timm does): see petlprune/_compat.py.
_ensure_torchvision()

__version__ = "0.1.0"
