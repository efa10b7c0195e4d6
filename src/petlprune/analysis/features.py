"""The CLS token of every block of a ViT, collected in one eval-mode forward pass per batch.

SLS (and the CLS-token variants of SGLP and the angular baseline) look at the residual stream at
each block OUTPUT, before the final norm. timm's ``forward_intermediates(norm=False)`` returns exactly
those; a forward pre-hook on the first block adds the stream that enters it (patch + position
embedding, after ``norm_pre``), which the angular distance of a span starting at block 0 needs.

The result is stored as ``features.npz``: ``cls`` (L, n, d) float32, ``embed`` (n, d) float32,
``labels`` (n,) int64, and ``seconds`` (the pass's wall time, charged to the decision cost of the
methods that read the file).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from petlprune.io import atomic_path

__all__ = ["FEATURE_KEYS", "block_features", "save_features", "load_features"]

FEATURE_KEYS = ("cls", "embed", "labels")


@torch.no_grad()
def block_features(
    model: nn.Module, loader: Iterable[Any], device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CLS token of every block output (pre final norm) and of the first block's input.

    Args:
        model: a timm ``VisionTransformer`` with a class token (PETL modules inside its blocks are fine).
        loader: yields ``(images, labels)`` batches.
        device: where to run the model.

    Returns:
        ``(cls (L, n, d), embed (n, d), labels (n,))`` as float32 / float32 / int64 numpy arrays, in
        loader order. The model's train/eval mode is restored afterwards.
    """
    if getattr(model, "cls_token", None) is None:
        raise ValueError(f"block_features: {type(model).__name__} has no class token (CLS features undefined)")
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"block_features: {type(model).__name__} has no forward_intermediates (not a timm ViT?)")
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    entering: list[torch.Tensor] = []
    # The first block's input is not among forward_intermediates' outputs; catch it on the way in.
    hook = model.blocks[0].register_forward_pre_hook(lambda _m, args: entering.append(args[0][:, 0].float().cpu()))
    cls_parts, embed_parts, label_parts = [], [], []
    try:
        for i, batch in enumerate(loader):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(f"block_features: loader batch {i} is not (images, labels)")
            x, y = batch[0], batch[1]
            inter = model.forward_intermediates(
                x.to(device), indices=None, norm=False, output_fmt="NLC",
                return_prefix_tokens=True, intermediates_only=True,
            )  # L x (spatial (B, T, d), prefix (B, P, d))
            cls_parts.append(torch.stack([prefix[:, 0] for _, prefix in inter]).float().cpu())  # (L, B, d)
            embed_parts.append(entering.pop())  # (B, d)
            label_parts.append(torch.as_tensor(y).reshape(-1).long().cpu())
    finally:
        hook.remove()
        model.train(was_training)
    if not cls_parts:
        raise ValueError("block_features: the loader yielded no batch")
    cls = torch.cat(cls_parts, dim=1).numpy()
    embed = torch.cat(embed_parts).numpy()
    labels = torch.cat(label_parts).numpy()
    if labels.shape[0] != cls.shape[1]:
        raise ValueError(f"block_features: {cls.shape[1]} images but {labels.shape[0]} labels")
    return cls, embed, labels


def save_features(
    path: str | os.PathLike, cls: np.ndarray, embed: np.ndarray, labels: np.ndarray, *, seconds: float | None = None,
    split: str | None = None,
) -> None:
    """Write ``features.npz`` atomically (keys :data:`FEATURE_KEYS`, plus ``seconds`` the pass took and the
    ``split`` it ran over, if given: ``score --val`` refuses features that saw val200)."""
    arrays = {"cls": np.asarray(cls, np.float32), "embed": np.asarray(embed, np.float32),
              "labels": np.asarray(labels, np.int64)}
    if seconds is not None:
        arrays["seconds"] = np.float64(seconds)
    if split is not None:
        arrays["split"] = np.array(split)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_features(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and check ``features.npz``: ``cls`` (L, n, d), ``embed`` (n, d), ``labels`` (n,) [, ``seconds``]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: features file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data: Mapping[str, np.ndarray] = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable npz ({err})") from None
    missing = [k for k in FEATURE_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing} (expected {list(FEATURE_KEYS)})")
    cls, embed, labels = (data[k] for k in FEATURE_KEYS)
    if cls.ndim != 3 or embed.shape != cls.shape[1:] or labels.shape != (cls.shape[1],):
        raise ValueError(
            f"{path}: inconsistent shapes cls {cls.shape}, embed {embed.shape}, labels {labels.shape} "
            "(expected (L, n, d), (n, d), (n,))"
        )
    out = {"cls": cls, "embed": embed, "labels": labels}
    if "seconds" in data:
        out["seconds"] = float(data["seconds"])
    if "split" in data:
        out["split"] = str(data["split"])
    return out
