"""petlprune: a reproducible comparative study of pruning for PETL-adapted vision transformers."""

from petlprune import _compat

# Before anything imports torchvision (timm does): see petlprune/_compat.py. Lazy: costs nothing
# until torchvision is actually imported.
_compat.install()

__version__ = "0.1.0"
