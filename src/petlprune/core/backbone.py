"""What a backbone config must satisfy before anything is built: the ViT's shapes divide.

timm would fail only inside the pretrain or fine-tune job (``embed_dim`` not divisible by
``num_heads`` is an assertion in ``Attention``; an image that the patch size does not tile is cut
silently or refused, depending on the version); the workflow checks it when the DAG is parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["check_backbone_shape", "backbone_depth"]


def backbone_depth(timm_kwargs: Mapping[str, Any] | None) -> int | None:
    """The number of blocks a config's ``timm_kwargs`` gives, or None when timm's default applies."""
    depth = (timm_kwargs or {}).get("depth")
    return depth if isinstance(depth, int) and not isinstance(depth, bool) else None


def check_backbone_shape(timm_kwargs: Mapping[str, Any] | None) -> None:
    """Raise ``ValueError`` naming the ``timm_kwargs`` key when the given shapes cannot make a ViT."""
    kw = dict(timm_kwargs or {})
    for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
        if key in kw and (not isinstance(kw[key], int) or isinstance(kw[key], bool) or kw[key] < 1):
            raise ValueError(f"timm_kwargs.{key}: must be a positive integer, got {kw[key]!r}")
    if "embed_dim" in kw and "num_heads" in kw and kw["embed_dim"] % kw["num_heads"]:
        raise ValueError(f"timm_kwargs.num_heads: embed_dim {kw['embed_dim']} is not divisible by "
                         f"num_heads {kw['num_heads']}")
    if "img_size" in kw and "patch_size" in kw and kw["img_size"] % kw["patch_size"]:
        raise ValueError(f"timm_kwargs.patch_size: img_size {kw['img_size']} is not a multiple of "
                         f"patch_size {kw['patch_size']}")
