"""SGLP's block representations: CKA over all tokens streamed from a loader, and the CLS features file.

``token_cka`` is the ``tokens: all`` ablation (every token of each block output flattened, a forward
pass over the loader); ``cls_features`` reads the CLS token of every block output from ``features.npz``
(the default, ``tokens: cls``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from petlprune.analysis.cka import MinibatchCKA, batch_sizes
from petlprune.methods.sglp_vocab import TOKENS

__all__ = ["TOKENS", "cls_features", "token_cka"]



@torch.no_grad()
def token_cka(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    tokens: str = "all",
    estimator: str = "biased",
    batch_size: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """CKA matrix of the block outputs of ``model`` on the loader's images, streamed in CKA batches.

    Block outputs come from timm's ``forward_intermediates`` (eval mode, no final norm); ``all``
    flattens every token (prefix + patch) per sample, ``cls`` takes the class token. Features of at
    most one CKA batch are held at a time.

    Args:
        model: a timm VisionTransformer.
        loader: yields (images, labels); ``len(loader.dataset)`` must be known when ``batch_size`` is set.
        tokens: ``all`` or ``cls``.
        estimator: see :func:`petlprune.analysis.cka.cka_matrix`.
        batch_size: CKA batch size (None: all samples in one batch).
        max_samples: use only the first ``max_samples`` samples.
        seed: seeds the RNG while iterating (shuffling loaders).
    """
    if tokens not in TOKENS:
        raise ValueError(f"token_cka: tokens must be one of {TOKENS}, got {tokens!r}")
    dataset = getattr(loader, "dataset", None)
    if batch_size is not None and dataset is None:
        raise ValueError("token_cka: cka_batch_size needs a loader with a sized `dataset`")
    n = len(dataset) if dataset is not None else None
    if n is not None and max_samples is not None:
        n = min(n, max_samples)
    sizes = batch_sizes(n, batch_size) if batch_size is not None else None  # CKA batches still to fill
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    acc = MinibatchCKA(estimator)
    buffer: list[list[torch.Tensor]] = []  # per loader batch: per block (B, D)
    buffered = seen = 0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i, batch in enumerate(loader):
                if not isinstance(batch, Sequence) or len(batch) < 1:
                    raise ValueError(f"loader batch {i}: expected (images, labels), got {type(batch).__name__}")
                images = batch[0]
                if max_samples is not None:
                    images = images[: max_samples - seen]
                if images.shape[0] == 0:
                    break
                outs = model.forward_intermediates(
                    images.to(device), norm=False, output_fmt="NLC", intermediates_only=True,
                    return_prefix_tokens=True,
                )  # per block: (patch (B, N, C), prefix (B, P, C))
                # kept on the model's device in its dtype; MinibatchCKA works in float64 on that device
                if tokens == "cls":
                    per_block = [prefix[:, 0] for _, prefix in outs]  # (B, C)
                else:
                    per_block = [torch.cat([prefix, patch], 1).flatten(1) for patch, prefix in outs]  # (B, T·C)
                buffer.append(per_block)
                buffered += images.shape[0]
                seen += images.shape[0]
                while sizes and buffered >= sizes[0]:
                    size = sizes.pop(0)
                    merged = [torch.cat(parts) for parts in zip(*buffer, strict=True)]  # per block (buffered, D)
                    acc.update([m[:size] for m in merged])
                    rest = [m[size:] for m in merged]
                    buffered -= size
                    buffer = [rest] if buffered else []
                if max_samples is not None and seen >= max_samples:
                    break
    finally:
        model.train(was_training)
    if batch_size is None:
        if not buffer:
            raise ValueError("token_cka: the loader yielded no image")
        acc.update([torch.cat(parts) for parts in zip(*buffer, strict=True)])
    elif sizes:
        raise ValueError(
            f"token_cka: the loader yielded {seen} samples, fewer than the {n} expected from len(loader.dataset) "
            "and max_samples (a drop_last loader?)"
        )
    return acc.compute()


def cls_features(features: Any) -> np.ndarray:
    """(L, n, d) CLS features from an array or a features.npz mapping with ``cls``."""
    if features is None:
        raise ValueError("method 'sglp' (tokens: cls) needs the block features (features.npz) in the scoring context")
    if isinstance(features, Mapping):
        if "cls" not in features:
            raise ValueError(f"method 'sglp': features lack key 'cls' (have {sorted(features)})")
        features = features["cls"]
    cls = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features)
    if cls.ndim != 3:
        raise ValueError(f"method 'sglp': features 'cls' must be (L, n, d), got shape {cls.shape}")
    return cls
