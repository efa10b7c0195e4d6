"""SPLoRA: the low-rank adapter of Structured Pruning Adapters (Hedegaard et al., arXiv 2211.10155).

Every adapted linear layer computes ``y = x (diag(m_out) (W + C R) diag(m_in))^T + m_out * b`` with the
backbone's W frozen, C (out x r, init U(+-1e-4)) and R (r x in, Kaiming-uniform a=sqrt 5) trainable and
a trainable bias b (a copy of the backbone's bias at injection: the backbone's own bias is removed from
the forward path, so a task stores exactly C, R and b). The channel masks ``m_out``/``m_in`` are
buffers of the layer, applied IN THE FORWARD PASS to W, C, R and b: a pruned channel contributes
nothing and gets no gradient, so optimiser steps cannot grow it back (the official experiments zeroed
weights once; we do not).

Dependency groups of a timm ViT block (the residual width is never pruned):
    ``blocks.{i}.mlp``  MLP hidden channels: fc1 rows (m_out) and fc2 columns (m_in), one bit each;
    ``blocks.{i}.attn`` attention heads: a head's q, k and v rows of qkv (m_out) and its proj columns
        (m_in), one bit per head.

Initial range of R (option ``init``, book/methods/spa.md). Kaiming-uniform with a = sqrt 5 draws from
U(+-1/sqrt(fan_in)). The SPA authors' library (``structured-pruning-adapters`` 0.7.1,
``sp_adapters/lora.py`` ``LowRankMatrix``) stores R as a ``(1, r, in)`` tensor, so torch takes its fan-in as
``r * in`` and the bound is 1/sqrt(r in) (0.0255 at in = 384, r = 4); its comment says "as in
torch.nn.Linear", which would be 1/sqrt(in). The paper's numbers were made with the library, so
``library`` (bound 1/sqrt(r in)) is the default and ``linear`` (bound 1/sqrt(in), sqrt(r) times wider)
the ablation.

``fuse_`` folds C R into W (fine-pruning trains W itself, from the same start); ``slice_channels`` in
``models.surgery`` makes the masked model a smaller dense timm model for deployment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from petlprune.models.petl_base import PetlModule

__all__ = [
    "SPLORA_TARGETS",
    "SPLORA_INITS",
    "SPLoRA",
    "SPLoRALinear",
    "inject_splora",
    "splora_layers",
    "channel_groups",
    "get_masks",
    "set_masks",
    "effective_numel",
]

SPLORA_INITS = ("library", "linear")
SPLORA_TARGETS = {"qkv": ("attn", "qkv"), "proj": ("attn", "proj"), "fc1": ("mlp", "fc1"), "fc2": ("mlp", "fc2")}


class SPLoRA(PetlModule):
    """The task weights of one SPLoRA layer: C (out x r), R (r x in) and the bias (out).

    Args:
        in_features: input width of the adapted layer.
        out_features: output width.
        rank: r (0 after ``SPLoRALinear.fuse_``: no low-rank update left).
        bias: initial bias (the backbone's), or None for zeros.
        init: range of R: ``library`` (U(+-1/sqrt(r in)), the SPA library's) or ``linear``
            (U(+-1/sqrt(in)), torch.nn.Linear's); see the module docstring.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: torch.Tensor | None = None,
                 init: str = "library") -> None:
        super().__init__()
        if rank < 0:
            raise ValueError(f"SPLoRA rank must be >= 0, got {rank}")
        if init not in SPLORA_INITS:
            raise ValueError(f"splora option 'init' must be one of {list(SPLORA_INITS)}, got {init!r}")
        self.rank = int(rank)
        self.init = init
        self.C = nn.Parameter(torch.empty(out_features, self.rank))
        self.R = nn.Parameter(torch.empty(self.rank, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features) if bias is None else bias.detach().clone())
        self.register_buffer("_bias0", self.bias.detach().clone(), persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        if self.rank:
            nn.init.uniform_(self.C, -1e-4, 1e-4)  # SPA's init: near-zero, not zero, so R gets gradients
            if self.init == "library":
                # the library's (1, r, in) tensor: fan-in r * in, bound 1/sqrt(r in)
                nn.init.kaiming_uniform_(self.R.view(1, *self.R.shape), a=math.sqrt(5))  # (1, r, in)
            else:
                nn.init.kaiming_uniform_(self.R, a=math.sqrt(5))  # (r, in): fan-in in, bound 1/sqrt(in)
        with torch.no_grad():
            self.bias.copy_(self._bias0)

    def delta_weight(self) -> torch.Tensor:
        """The dense update C R, shape (out, in)."""
        return self.C @ self.R


class SPLoRALinear(nn.Module):
    """A linear layer ``diag(m_out)(W + C R)diag(m_in)`` with bias ``m_out * b``.

    Args:
        base: the backbone's ``nn.Linear`` (its weight is kept frozen, its bias moves into the adapter).
        rank: SPLoRA rank r.
        init: range of R (:data:`SPLORA_INITS`).
    """

    def __init__(self, base: nn.Linear, rank: int, init: str = "library") -> None:
        super().__init__()
        bias = base.bias
        base.register_parameter("bias", None)  # the task bias lives in the adapter
        self.base = base
        self.adapter = SPLoRA(base.in_features, base.out_features, rank, bias, init)
        self.register_buffer("mask_out", torch.ones(base.out_features, device=base.weight.device))
        self.register_buffer("mask_in", torch.ones(base.in_features, device=base.weight.device))
        # fine-pruning trains W itself: then W is a task weight (models.petl reads this hook).
        self.train_base = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def extra_task_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters that are task weights (W when fine-pruning), for ``models.petl``."""
        return [self.base.weight] if self.train_base else []

    def fused_weight(self) -> torch.Tensor:
        """``W + C R`` without masks, shape (out, in)."""
        w = self.base.weight
        return w + self.adapter.delta_weight() if self.adapter.rank else w

    def weight(self) -> torch.Tensor:
        """The task weight ``diag(m_out)(W + C R)diag(m_in)``, shape (out, in)."""
        return self.fused_weight() * self.mask_out[:, None] * self.mask_in[None, :]

    def effective_bias(self) -> torch.Tensor:
        return self.adapter.bias * self.mask_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The masked weight is formed once per call (out x in, cheap next to the activations); masking
        # the activations instead measured slower on CPU (two extra element-wise passes and their grads).
        return F.linear(x, self.weight(), self.effective_bias())  # (..., out)

    @torch.no_grad()
    def fuse_(self) -> None:
        """Fold C R into W and drop the low-rank factors (rank 0); the output is unchanged."""
        self.base.weight.copy_(self.fused_weight())
        a = self.adapter
        a.rank = 0
        a.C = nn.Parameter(a.C.new_empty(a.C.shape[0], 0))
        a.R = nn.Parameter(a.R.new_empty(0, a.R.shape[1]))


def inject_splora(model: nn.Module, rank: int = 4, targets: list[str] | None = None,
                  init: str = "library") -> nn.Module:
    """Replace qkv, proj, fc1 and fc2 of every block by :class:`SPLoRALinear`, in place.

    Args:
        model: a timm ``VisionTransformer``.
        rank: SPLoRA rank r.
        targets: subset of :data:`SPLORA_TARGETS` (default all four: channel pruning needs both the
            producer and the consumer of a group to carry masks).
        init: range of R, ``library`` (default) or ``linear`` (:data:`SPLORA_INITS`).
    """
    targets = list(targets or SPLORA_TARGETS)
    bad = [t for t in targets if t not in SPLORA_TARGETS]
    if bad or not targets:
        raise ValueError(f"splora targets {targets}: expected a non-empty subset of {list(SPLORA_TARGETS)}")
    if int(rank) < 1:
        raise ValueError(f"splora rank must be >= 1, got {rank}")
    if init not in SPLORA_INITS:
        raise ValueError(f"splora option 'init' must be one of {list(SPLORA_INITS)}, got {init!r}")
    for block in model.blocks:
        for target in targets:
            parent = getattr(block, SPLORA_TARGETS[target][0])
            name = SPLORA_TARGETS[target][1]
            linear = getattr(parent, name)
            if not isinstance(linear, nn.Linear):
                raise TypeError(f"splora target {target}: {type(linear).__name__} is not nn.Linear")
            setattr(parent, name, SPLoRALinear(linear, int(rank), init))
    return model


def splora_layers(model: nn.Module) -> dict[str, SPLoRALinear]:
    """Name -> every SPLoRA layer of the model, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SPLoRALinear)}


def channel_groups(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The prunable dependency groups: ``blocks.{i}.mlp`` (hidden channels) and ``blocks.{i}.attn`` (heads).

    Returns:
        group name -> ``{"units": n, "width": channels per unit (1 or head_dim), "producer": layer,
        "consumer": layer, "kind": "mlp" | "heads"}``; the producer's output rows of unit u are
        ``rows(group, u)``.
    """
    groups: dict[str, dict[str, Any]] = {}
    for i, block in enumerate(model.blocks):
        fc1, fc2 = block.mlp.fc1, block.mlp.fc2
        if isinstance(fc1, SPLoRALinear) and isinstance(fc2, SPLoRALinear):
            groups[f"blocks.{i}.mlp"] = dict(kind="mlp", units=fc1.out_features, width=1, producer=fc1, consumer=fc2)
        qkv, proj, attn = block.attn.qkv, block.attn.proj, block.attn
        if isinstance(qkv, SPLoRALinear) and isinstance(proj, SPLoRALinear):
            groups[f"blocks.{i}.attn"] = dict(kind="heads", units=attn.num_heads, width=attn.head_dim,
                                              producer=qkv, consumer=proj)
    if not groups:
        raise ValueError("model has no SPLoRA dependency groups (inject_petl(model, 'splora') first)")
    return groups


def _expand(group: Mapping[str, Any], unit_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(producer m_out, consumer m_in) from one bit per unit."""
    channel = unit_mask.repeat_interleave(group["width"])  # (units * width,)
    if group["kind"] == "heads":
        return channel.repeat(3), channel  # qkv rows are [q | k | v], each heads x head_dim
    return channel, channel


def set_masks(model: nn.Module, masks: Mapping[str, Any]) -> nn.Module:
    """Set the unit masks ``{group: 0/1 per unit}`` on the producer and consumer layers, in place."""
    groups = channel_groups(model)
    unknown = sorted(set(masks) - set(groups))
    if unknown:
        raise ValueError(f"masks name unknown group(s) {unknown[:4]} (model groups: {list(groups)[:4]} ...)")
    for name, bits in masks.items():
        g = groups[name]
        # Checked on the CPU whatever the model's device (masks from a CUDA model's get_masks, lists,
        # numpy): copy_ below moves them into the layer's buffers.
        m = torch.as_tensor(bits).detach().to("cpu", torch.float32).flatten()
        if m.numel() != g["units"] or not torch.isin(m, torch.tensor([0.0, 1.0])).all():
            raise ValueError(f"mask {name}: expected {g['units']} values in {{0, 1}}, got {m.numel()}")
        if not m.any():
            raise ValueError(f"mask {name}: every unit pruned; a layer keeps at least one")
        out, inp = _expand(g, m)
        g["producer"].mask_out.copy_(out)
        g["consumer"].mask_in.copy_(inp)
    return model


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The current unit masks ``{group: (units,) float 0/1}`` read from the producers, on the CPU.

    On the CPU whatever the model's device: the masks are bookkeeping (scores indexed by them, numpy
    sidecars, lists in a Plan), and a CUDA model's buffers used to leak into CPU code and crash there.
    """
    out = {}
    for name, g in channel_groups(model).items():
        m = g["producer"].mask_out
        m = m[: m.numel() // 3] if g["kind"] == "heads" else m
        out[name] = m.reshape(g["units"], g["width"])[:, 0].detach().cpu().clone()
    return out


def effective_numel(model: nn.Module) -> dict[str, int]:
    """What each SPLoRA task tensor costs to store under its masks, by parameter name.

    Per layer: C -> r |m_out|, R -> r |m_in|, bias -> |m_out| (SPA's r(|m_out| + |m_in|) + |m_out|),
    and W -> |m_out| |m_in| when W is a task weight (fine-pruning).
    """
    counts: dict[str, int] = {}
    for name, layer in splora_layers(model).items():
        n_out, n_in = int(layer.mask_out.sum().item()), int(layer.mask_in.sum().item())
        r = layer.adapter.rank
        counts[f"{name}.adapter.C"] = r * n_out
        counts[f"{name}.adapter.R"] = r * n_in
        counts[f"{name}.adapter.bias"] = n_out
        if layer.train_base:
            counts[f"{name}.base.weight"] = n_out * n_in
    return counts
