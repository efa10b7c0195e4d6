"""Importance criteria (analysis/importance.py) against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from _helpers import Negate, tiny_loader, tiny_vit
from petlprune.analysis.importance import (
    angular_distance,
    block_influence,
    span_distances,
    taylor_importance,
    token_cosine,
)


class WithAdapter(nn.Module):
    """Test-local parallel adapter around a block's MLP: mlp(x) + up(gelu(down(x)))."""

    def __init__(self, mlp: nn.Module, dim: int, hidden: int = 4) -> None:
        super().__init__()
        self.mlp = mlp
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.up(nn.functional.gelu(self.down(x)))


def loop_cosine_mean(h_in: torch.Tensor, h_out: torch.Tensor) -> tuple[float, int]:
    """Sum of per-token cosines with explicit Python loops, and the token count."""
    total, count = 0.0, 0
    for b in range(h_in.shape[0]):
        for t in range(h_in.shape[1]):
            u, v = h_in[b, t].double().tolist(), h_out[b, t].double().tolist()
            dot = sum(x * y for x, y in zip(u, v, strict=True))
            total += dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))
            count += 1
    return total, count


def test_token_cosine_equals_loop() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    got = token_cosine(a, b)
    assert got.shape == (2, 5)
    for i in range(2):
        for t in range(5):
            total, _ = loop_cosine_mean(a[i : i + 1, t : t + 1], b[i : i + 1, t : t + 1])
            assert got[i, t].item() == pytest.approx(total, abs=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        token_cosine(a, b[:, :3])


def test_block_influence_identity_negation_and_loop_reference() -> None:
    model = tiny_vit(depth=4)
    model.blocks[1] = nn.Identity()
    model.blocks[2] = Negate()
    loader = tiny_loader()
    model.train()
    bi = block_influence(model, loader)
    assert model.training  # mode restored
    assert bi.shape == (4,)
    assert bi[1].item() == pytest.approx(0.0, abs=1e-9)
    assert bi[2].item() == pytest.approx(2.0, abs=1e-9)

    # independent reference: an explicit eval forward through the blocks, cosine by loops
    model.eval()
    sums, counts = [0.0] * 4, [0] * 4
    with torch.no_grad():
        for images, _ in loader:
            x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
            for i, blk in enumerate(model.blocks):
                y = blk(x)
                total, count = loop_cosine_mean(x, y)
                sums[i] += total
                counts[i] += count
                x = y
    expected = [1.0 - s / c for s, c in zip(sums, counts, strict=True)]
    assert bi.tolist() == pytest.approx(expected, abs=1e-6)
    assert counts[0] == 2 * 3 * 17  # every token of every sample (16 patches + CLS)


def test_block_influence_batches_limit_and_empty_loader() -> None:
    model = tiny_vit(depth=2)
    loader = tiny_loader(batches=3)
    assert block_influence(model, loader, batches=1).tolist() == pytest.approx(
        block_influence(model, loader[:1]).tolist())
    with pytest.raises(ValueError, match="no batch"):
        block_influence(model, [])


def test_angular_distance_known_values() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [-1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    assert angular_distance(a, b).tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0], abs=1e-6)


def test_span_distances_equal_loop() -> None:
    g = torch.Generator().manual_seed(3)
    states = torch.randn(6, 4, 3, generator=g)  # L = 5 blocks, 4 samples
    for n in range(1, 6):
        got = span_distances(states, n)
        assert got.shape == (6 - n,)
        for start in range(6 - n):
            ref = 0.0
            for s in range(4):
                u, v = states[start, s].double(), states[start + n, s].double()
                ref += math.acos(max(-1.0, min(1.0, float(u @ v / (u.norm() * v.norm()))))) / math.pi
            assert got[start].item() == pytest.approx(ref / 4, abs=1e-9)
    with pytest.raises(ValueError, match="outside 1..5"):
        span_distances(states, 6)


def test_taylor_equals_hand_computation_on_linear_model() -> None:
    torch.manual_seed(1)  # weight and bias terms of opposite sign: |Σ| over the group ≠ Σ of |·|
    model = nn.Linear(3, 2)
    g = torch.Generator().manual_seed(5)
    loader = [(torch.randn(3, 3, generator=g), torch.tensor([0, 1, 1])),
              (torch.randn(2, 3, generator=g), torch.tensor([1, 0]))]  # unequal batch sizes
    groups = {"w": [model.weight], "b": [model.bias]}

    # by hand: mean cross-entropy over all 5 samples → dL/dz = (softmax(z) - onehot) / N
    x = np.concatenate([xb.numpy() for xb, _ in loader]).astype(np.float64)
    y = np.concatenate([yb.numpy() for _, yb in loader])
    w, b = model.weight.detach().double().numpy(), model.bias.detach().double().numpy()
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(2)[y]) / len(y)
    dw, db = dz.T @ x, dz.sum(0)

    res = taylor_importance(model, groups, loader, batches=8)
    assert (res.batches, res.samples) == (2, 5)
    assert res.values["w"] == pytest.approx(abs((w * dw).sum()), rel=1e-6)
    assert res.values["b"] == pytest.approx(abs((b * db).sum()), rel=1e-6)
    assert (w * dw).sum() * (b * db).sum() < 0
    both = taylor_importance(model, {"all": [model.weight, model.bias]}, loader).values["all"]
    assert both == pytest.approx(abs((w * dw).sum() + (b * db).sum()), rel=1e-6)
    elem = taylor_importance(model, groups, loader, elementwise=True, normalize=True).values
    assert elem["w"] == pytest.approx(np.abs(w * dw).sum() / 6, rel=1e-6)
    assert elem["b"] == pytest.approx(np.abs(b * db).sum() / 2, rel=1e-6)
    one = taylor_importance(model, groups, loader, batches=1)
    assert (one.batches, one.samples) == (1, 3)


def test_taylor_zeroed_adapter_ranks_last_and_model_is_untouched() -> None:
    model = tiny_vit(depth=4)
    for blk in model.blocks:
        blk.mlp = WithAdapter(blk.mlp, 32)
    with torch.no_grad():
        for p in model.blocks[2].mlp.up.parameters():
            p.zero_()
        for p in model.blocks[2].mlp.down.parameters():
            p.zero_()
    for name, p in model.named_parameters():  # PETL-style: backbone frozen
        p.requires_grad_(".down." in name or ".up." in name or name.startswith("head"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    groups = {i: [*blk.mlp.down.parameters(), *blk.mlp.up.parameters()] for i, blk in enumerate(model.blocks)}
    res = taylor_importance(model, groups, tiny_loader(), batches=2)
    values = [res.values[i] for i in range(4)]
    assert values[2] == 0.0
    assert all(v > 0 for i, v in enumerate(values) if i != 2)
    assert min(range(4), key=values.__getitem__) == 2

    # frozen parameters can be scored; nothing in the model changes
    blocks = taylor_importance(model, {i: list(b.parameters()) for i, b in enumerate(model.blocks)},
                               tiny_loader(), batches=1)
    assert all(v > 0 for v in blocks.values.values())
    assert all(p.grad is None for p in model.parameters())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_taylor_bad_input() -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="groups without parameters"):
        taylor_importance(model, {"a": []}, [])
    with pytest.raises(ValueError, match="batches must be >= 1"):
        taylor_importance(model, {"a": [model.weight]}, [], batches=0)
    with pytest.raises(ValueError, match="no batch"):
        taylor_importance(model, {"a": [model.weight]}, [])
    with pytest.raises(ValueError, match="loader batch 0"):
        taylor_importance(model, {"a": [model.weight]}, [torch.zeros(2, 3)])
