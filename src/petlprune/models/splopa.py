"""SPLoPA: Block-SPA's prototype adapter with block masks (Hedegaard et al., "Structured Pruning
Adapters", arXiv 2211.10155; spec ``book/methods/specs/spa.md``, section Block-SPA).

Every adapted linear layer W (n_out x n_in) is tiled into b x b blocks, a grid of
(n_out/b) x (n_in/b). The task update is a sum of Kronecker products

    ΔW = Σ_{k=1..K} B_k ⊗ P_k,     P_k = u_k v_kᵀ (b x b, rank 1),

with K prototypes P_k SHARED by all layers of the same shape (one :class:`Prototypes` module object
referenced by each of them, so its gradient sums over every layer and it is stored once) and per-layer
position weights B_k of the grid's shape (:class:`BlockPositions`). A block mask M (kept grid cells)
multiplies ``W + ΔW`` in the forward pass, so a pruned block contributes nothing, ever.

The position weights are held only for the kept cells: ``B`` is a (K, n_kept) parameter next to a
``cells`` buffer of their flat grid indices. :func:`keep_cells` shrinks both, so a pruned task stores
exactly K · |kept blocks| numbers per layer (``task_state_dict`` counts them; the prototypes once),
and a Plan's cell lists rebuild the shapes before stored weights are loaded.

Init: B = 0 (ΔW = 0: the model starts as its backbone), u and v ~ N(0, 1/b) so P entries are O(1/b).
The backbone bias stays frozen (SPLoPA adds no task bias). Adapted layers: ``attn.qkv``,
``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` of every block (``targets``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from petlprune.models.petl_base import PetlModule

__all__ = ["Prototypes", "auto_block", "BlockPositions", "BlockLinear", "inject_splopa", "block_layers", "keep_cells",
           "kron_delta", "SPLOPA_TARGETS"]

SPLOPA_TARGETS = {"qkv": ("attn", "qkv"), "proj": ("attn", "proj"), "fc1": ("mlp", "fc1"), "fc2": ("mlp", "fc2")}


class Prototypes(PetlModule):
    """K rank-1 prototypes ``P_k = u_k v_kᵀ`` (b x b), shared by every layer of one shape.

    Args:
        block: b.
        count: K.
    """

    def __init__(self, block: int, count: int) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.empty(count, block))
        self.v = nn.Parameter(torch.empty(count, block))
        self.init_weights()

    def init_weights(self) -> None:
        std = 1 / math.sqrt(self.u.shape[1])
        nn.init.normal_(self.u, 0.0, std)
        nn.init.normal_(self.v, 0.0, std)

    def forward(self) -> torch.Tensor:
        return torch.einsum("kr,kc->krc", self.u, self.v)  # (K, b, b)


class BlockPositions(PetlModule):
    """The per-layer weights B_k of the kept grid cells: ``B`` (K, n_kept), ``cells`` (n_kept,) flat indices.

    Args:
        grid: (n_out / b, n_in / b).
        count: K.
    """

    def __init__(self, grid: tuple[int, int], count: int) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        n = self.grid[0] * self.grid[1]
        self.B = nn.Parameter(torch.zeros(count, n))
        self.register_buffer("cells", torch.arange(n))

    def init_weights(self) -> None:
        nn.init.zeros_(self.B)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense (K, go, gi) position weights and the (go, gi) 0/1 block mask."""
        K, (go, gi) = self.B.shape[0], self.grid
        dense = self.B.new_zeros(K, go * gi).index_copy(1, self.cells, self.B)
        mask = self.B.new_zeros(go * gi).index_fill(0, self.cells, 1.0)
        return dense.view(K, go, gi), mask.view(go, gi)


def kron_delta(B: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """``Σ_k B_k ⊗ P_k`` for B (K, go, gi) and P (K, b, b): (go·b, gi·b)."""
    K, go, gi = B.shape
    b = P.shape[-1]
    return torch.einsum("kij,krc->irjc", B, P).reshape(go * b, gi * b)


class BlockLinear(nn.Module):
    """``F.linear(x, M ⊙ (W + Σ_k B_k ⊗ P_k), bias)`` around a frozen ``nn.Linear``.

    Args:
        base: the frozen backbone layer (its bias is used, frozen).
        prototypes: the :class:`Prototypes` shared by layers of this shape.
        block: b; must divide both dimensions of ``base.weight``.
    """

    def __init__(self, base: nn.Linear, prototypes: Prototypes, block: int) -> None:
        super().__init__()
        n_out, n_in = base.weight.shape
        if n_out % block or n_in % block:
            raise ValueError(f"splopa: block size {block} does not divide the layer shape ({n_out}, {n_in})")
        self.base = base
        self.block = int(block)
        self.prototypes = prototypes
        self.positions = BlockPositions((n_out // block, n_in // block), prototypes.u.shape[0])

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """ΔW (n_out, n_in), unmasked."""
        dense, _ = self.positions()
        return kron_delta(dense, self.prototypes())

    def effective_weight(self) -> torch.Tensor:
        """M ⊙ (W + ΔW) (n_out, n_in): what the layer computes with."""
        dense, mask = self.positions()
        b = self.block
        full_mask = mask.repeat_interleave(b, 0).repeat_interleave(b, 1)  # (n_out, n_in)
        return (self.base.weight + kron_delta(dense, self.prototypes())) * full_mask

    def block_magnitude(self) -> torch.Tensor:
        """(go, gi) mean |W + ΔW| of every block (masked blocks included, unmasked)."""
        w = (self.base.weight + self.delta_weight()).abs()
        go, gi = self.positions.grid
        b = self.block
        return w.reshape(go, b, gi, b).mean(dim=(1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.base.bias)


def auto_block(model: nn.Module, targets: list[str] | tuple[str, ...] = tuple(SPLOPA_TARGETS), most: int = 16) -> int:
    """The largest b <= ``most`` dividing every target layer's shape (16 for our 96-wide ViT, 8 for 24)."""
    dims = [n for blk in model.blocks for t in targets
            for n in getattr(getattr(blk, SPLOPA_TARGETS[t][0]), SPLOPA_TARGETS[t][1]).weight.shape]
    g = math.gcd(*dims)
    return max(b for b in range(1, most + 1) if g % b == 0)


def inject_splopa(model: nn.Module, block: int | str = "auto", prototypes: int = 4,
                  targets: list[str] | tuple[str, ...] = tuple(SPLOPA_TARGETS)) -> nn.Module:
    """Replace the target linears of every block by :class:`BlockLinear`, one Prototypes per shape.

    Args:
        model: a timm ViT without PETL.
        block: b, the block side (must divide every target shape); ``"auto"``: :func:`auto_block`.
        prototypes: K.
        targets: subset of ``qkv``, ``proj``, ``fc1``, ``fc2``.
    """
    bad = [t for t in targets if t not in SPLOPA_TARGETS]
    if bad or not targets:
        raise ValueError(f"splopa targets {list(targets)}: expected a non-empty subset of {list(SPLOPA_TARGETS)}")
    if block == "auto":
        block = auto_block(model, targets)
    if not isinstance(block, int) or block < 1 or prototypes < 1:
        raise ValueError(f"splopa: block and prototypes must be >= 1, got {block}, {prototypes}")
    shared: dict[tuple[int, int], Prototypes] = {}
    for blk in model.blocks:
        for target in targets:
            parent_name, child_name = SPLOPA_TARGETS[target]
            parent = getattr(blk, parent_name)
            linear = getattr(parent, child_name)
            if type(linear) is not nn.Linear:
                raise TypeError(f"splopa target {target}: {type(linear).__name__} is not nn.Linear")
            shape = tuple(linear.weight.shape)
            if shape not in shared:
                shared[shape] = Prototypes(block, prototypes)
            setattr(parent, child_name, BlockLinear(linear, shared[shape], block))
    return model


def block_layers(model: nn.Module) -> dict[str, BlockLinear]:
    """Name -> every :class:`BlockLinear` of the model, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BlockLinear)}


def keep_cells(layer: BlockLinear, cells: torch.Tensor | list[int]) -> None:
    """Keep only ``cells`` (flat grid indices, a subset of the kept ones) of a layer; B shrinks with them.

    Args:
        layer: the layer.
        cells: flat indices into its (go, gi) grid, any order; must all be currently kept.
    """
    pos = layer.positions
    new = torch.as_tensor(sorted(int(c) for c in cells), dtype=torch.long, device=pos.cells.device)
    where = torch.searchsorted(pos.cells, new)
    if len(new) == 0 or (where >= len(pos.cells)).any() or not torch.equal(pos.cells[where.clamp(max=len(pos.cells) - 1)], new):
        raise ValueError("splopa: keep_cells needs a non-empty subset of the layer's kept cells")
    requires_grad = pos.B.requires_grad
    pos.B = nn.Parameter(pos.B.detach()[:, where].clone(), requires_grad=requires_grad)
    pos.cells = new
