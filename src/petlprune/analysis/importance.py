"""Importance criteria of blocks and parameter groups, as plain functions.

Shared by the layer-pruning baselines (``methods/baselines.py``) and by Pear and SGLP:

- :func:`block_influence`: ShortGPT's Block Influence (Men et al., 2024), one hooked forward pass.
- :func:`angular_distance` / :func:`span_distances`: the angular distance between the residual stream
  before and after a span of blocks (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper
  Layers", 2024; PruneMe).
- :func:`taylor_importance`: first-order Taylor estimate ``|Σ θ·∂L/∂θ|`` of a parameter group,
  accumulated over a fixed number of batches (Molchanov et al., 2019; the criterion Pear uses).

Every function is read-only on the model: the train/eval flag, ``requires_grad`` and ``.grad`` are
left as they were found.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "forward_hooked",
    "token_cosine",
    "block_influence",
    "angular_distance",
    "span_distances",
    "all_span_distances",
    "TaylorImportance",
    "taylor_importance",
]


def token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching vectors along the last dimension, computed in float64.

    Row-wise (never an N×N matrix): ``a`` and ``b`` are (..., C) and the result is (...,).
    A zero vector has cosine 0 with anything (torch clamps each norm at 1e-8).

    Args:
        a: (..., C) tensor.
        b: (..., C) tensor of the same shape.
    """
    if a.shape != b.shape:
        raise ValueError(f"token_cosine: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``arccos(cos(a, b)) / π`` along the last dimension: 0 for parallel, 1 for opposite vectors.

    Args:
        a: (..., C) tensor.
        b: (..., C) tensor of the same shape.
    """
    # rounding can push |cos| a hair above 1, where arccos is NaN
    return torch.arccos(token_cosine(a, b).clamp(-1.0, 1.0)) / math.pi


def span_distances(states: torch.Tensor, n: int) -> torch.Tensor:
    """Mean angular distance between the input and the output of every span of ``n`` blocks.

    Args:
        states: (L + 1, S, C) residual stream: ``states[0]`` is the input of the first block,
            ``states[i]`` the output of block ``i - 1``; S samples (one token each, e.g. CLS).
        n: span length, 1 <= n <= L.

    Returns:
        (L + 1 - n,) float64: entry ``l`` is the distance over the span of blocks ``[l, l + n)``,
        i.e. between ``states[l]`` and ``states[l + n]``, averaged over samples.
    """
    if states.dim() != 3:
        raise ValueError(f"span_distances: states must be (L + 1, samples, C), got {tuple(states.shape)}")
    depth = states.shape[0] - 1
    if not 1 <= n <= depth:
        raise ValueError(f"span_distances: span length {n} outside 1..{depth}")
    return angular_distance(states[:-n], states[n:]).mean(dim=1)  # (L + 1 - n,)


def all_span_distances(states: torch.Tensor) -> dict[int, list[float]]:
    """:func:`span_distances` for every span length ``1..L``, as plain lists (JSON-ready).

    Args:
        states: (L + 1, S, C) residual stream, as in :func:`span_distances`.
    """
    return {n: span_distances(states, n).tolist() for n in range(1, states.shape[0])}


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _pairs(loader: Iterable[Any], batches: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) of the first ``batches`` batches (all of them when None)."""
    for i, batch in enumerate(islice(loader, batches)):
        if not isinstance(batch, Sequence) or len(batch) < 2:
            raise ValueError(f"loader batch {i}: expected (images, labels), got {type(batch).__name__}")
        yield batch[0], batch[1]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def forward_hooked(model: nn.Module, loader: Iterable[Any], batches: int | None, handles: list) -> None:
    """Run the first ``batches`` batches of ``loader`` through ``model`` (eval mode, no grad) for the
    forward hooks whose ``handles`` are given, then remove them, also on error. The block-, attention-
    and LoRA-output scorers (here, methods/attn_drop.py, methods/lora_drop.py) collect in their hooks."""
    device = _device_of(model)
    try:
        with _eval_mode(model), torch.no_grad():
            for images, _ in _pairs(loader, batches):
                model(images.to(device))
    finally:
        for handle in handles:
            handle.remove()


def _blocks_of(model: nn.Module) -> Sequence[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ValueError(f"{type(model).__name__} has no `blocks` (expected a timm VisionTransformer)")
    return blocks


@torch.no_grad()
def block_influence(model: nn.Module, loader: Iterable[Any], batches: int | None = None) -> torch.Tensor:
    """ShortGPT's Block Influence of every block: ``BI_i = 1 - mean cos(h_in, h_out)``.

    The mean runs over all tokens of all samples; forward hooks on ``model.blocks`` read every
    block's input and output in one eval-mode pass, so PETL modules inside a block count as part of it.
    Only per-block running sums are kept, never the activations.

    Args:
        model: a ViT with ``model.blocks``.
        loader: yields (images, labels) batches.
        batches: use only the first ``batches`` batches (all when None).

    Returns:
        (L,) float64 tensor; 0 for a block that leaves the stream unchanged, 2 for one that negates it.
    """
    blocks = _blocks_of(model)
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    counts = torch.zeros(len(blocks), dtype=torch.float64)

    def make_hook(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            h_in = args[0] if args else kwargs["x"]
            cos = token_cosine(h_in, output)  # (B, T)
            sums[i] += cos.sum().cpu()
            counts[i] += cos.numel()

        return hook

    forward_hooked(model, loader, batches,
                   [blk.register_forward_hook(make_hook(i), with_kwargs=True) for i, blk in enumerate(blocks)])
    if counts.min() == 0:
        raise ValueError("block_influence: the loader yielded no batch (or a block never ran)")
    return 1.0 - sums / counts


@dataclass
class TaylorImportance:
    """Result of :func:`taylor_importance`.

    Args:
        values: group key -> importance.
        batches: number of batches the gradient was accumulated over.
        samples: number of samples in those batches.
    """

    values: dict[Hashable, float]
    batches: int
    samples: int


def taylor_importance(
    model: nn.Module,
    groups: Mapping[Hashable, Sequence[nn.Parameter]],
    loader: Iterable[Any],
    batches: int = 8,
    *,
    elementwise: bool = False,
    normalize: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> TaylorImportance:
    """First-order Taylor importance of parameter groups: ``|Σ_{θ ∈ group} θ · ∂L/∂θ|``.

    ``-θ·∇L`` is the first-order change of the loss when the group is set to zero (removed). The
    gradient is that of the mean loss over every sample of the first ``batches`` batches (batch means
    weighted by batch size); the model is in eval mode and nothing is updated: gradients come from
    ``torch.autograd.grad``, so ``.grad`` of the model is untouched, and ``requires_grad`` is switched
    on for the groups only while measuring (frozen backbone weights can be scored too).

    Args:
        model: module mapping images to logits.
        groups: key -> parameters of that group (a parameter may appear in several groups).
        loader: yields (images, labels) batches; should be deterministic (fixed order).
        batches: number of batches to accumulate over (fewer if the loader is shorter).
        elementwise: ``Σ |θ · ∂L/∂θ|`` instead (the absolute value before summing).
        normalize: divide each group's importance by its number of parameters.
        loss_fn: ``loss_fn(logits, labels)`` -> mean loss of the batch.
    """
    if batches < 1:
        raise ValueError(f"taylor_importance: batches must be >= 1, got {batches}")
    empty = [key for key, params in groups.items() if len(params) == 0]
    if empty:
        raise ValueError(f"taylor_importance: groups without parameters: {empty}")
    unique: dict[int, nn.Parameter] = {}
    for params in groups.values():
        for p in params:
            unique.setdefault(id(p), p)
    params = list(unique.values())
    grad_sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    flags = [p.requires_grad for p in params]
    device = _device_of(model)
    n_batches = n_samples = 0
    try:
        for p in params:
            p.requires_grad_(True)
        with _eval_mode(model), torch.enable_grad():
            for images, labels in _pairs(loader, batches):
                images, labels = images.to(device), labels.to(device)
                loss = loss_fn(model(images), labels) * images.shape[0]  # batch sum
                for acc, grad in zip(grad_sums, torch.autograd.grad(loss, params, allow_unused=True), strict=True):
                    if grad is not None:  # an unused parameter has gradient 0
                        acc += grad.double()
                n_batches += 1
                n_samples += images.shape[0]
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    if n_samples == 0:
        raise ValueError("taylor_importance: the loader yielded no batch")

    contribution = {  # id(θ) -> θ · mean gradient, elementwise
        id(p): p.detach().double() * (acc / n_samples) for p, acc in zip(params, grad_sums, strict=True)
    }
    values: dict[Hashable, float] = {}
    for key, group in groups.items():
        members = {id(p): p for p in group}  # a parameter listed twice counts once
        terms = [contribution[i] for i in members]
        if elementwise:
            value = sum(float(t.abs().sum()) for t in terms)
        else:
            value = abs(sum(float(t.sum()) for t in terms))
        if normalize:
            value /= sum(p.numel() for p in members.values())
        values[key] = value
    return TaylorImportance(values, n_batches, n_samples)
