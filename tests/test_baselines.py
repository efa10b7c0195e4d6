"""The layer-pruning baselines (methods/baselines.py): registry, scores, plans."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from _helpers import Negate, tiny_loader, tiny_vit
from petlprune.methods import Budget, Plan, Scores, ScoringContext, get

NAMES = ("last_k", "random", "block_influence", "angular", "taylor_layer")


def planted_features(depth: int = 8, span: tuple[int, int] = (3, 6), samples: int = 64, dim: int = 16,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """features.npz-like stream where the blocks of ``span`` barely move the CLS token."""
    rng = np.random.default_rng(seed)
    stream = [rng.normal(size=(samples, dim))]
    for i in range(depth):
        step = 0.01 if span[0] <= i < span[1] else 1.0
        stream.append(stream[-1] + step * rng.normal(size=(samples, dim)))
    return {"embed": stream[0].astype(np.float32), "cls": np.stack(stream[1:]).astype(np.float32),
            "labels": rng.integers(0, 3, samples)}


def blocks_only(depth: int) -> SimpleNamespace:
    return SimpleNamespace(blocks=[nn.Identity() for _ in range(depth)])


def test_registered_with_needs_and_depth_budgets() -> None:
    needs = {"last_k": set(), "random": set(), "block_influence": {"loader"}, "angular": {"features"},
             "taylor_layer": {"loader"}}
    for name in NAMES:
        method = get(name)
        assert method.name == name
        assert set(method.needs) == needs[name]
        assert method.budget_kinds == ("depth",)
        with pytest.raises(ValueError, match="does not take a alpha budget"):
            method.plan(Scores(name, [0.0, 1.0, 2.0]), Budget.parse("a0.3"))


def test_last_k_keeps_the_prefix() -> None:
    method = get("last_k")
    scores = method.score(ScoringContext(model=blocks_only(6)))
    assert scores.values == [0.0, -1.0, -2.0, -3.0, -4.0, -5.0]
    for depth in range(1, 7):
        plan = method.plan(scores, Budget.depth(depth))
        assert plan.kept_blocks == list(range(depth)) and plan.is_prefix


def test_random_reproducible_per_seed_and_draw_and_uniform() -> None:
    method = get("random")
    model = blocks_only(12)

    def kept(seed: int, draw: int) -> list[int]:
        scores = method.score(ScoringContext(model=model, seed=seed, options={"draw": draw}))
        return method.plan(scores, Budget.depth(6)).kept_blocks

    assert kept(0, 0) == kept(0, 0)
    assert kept(1, 2) == kept(1, 2)
    assert len({tuple(kept(0, d)) for d in range(5)}) == 5  # different draws, different blocks
    assert kept(0, 1) != kept(1, 0)  # (seed, draw) is not a sum
    # every block is kept with probability 6/12 (top-k of i.i.d. scores is a uniform subset)
    freq = np.zeros(12)
    for draw in range(1000):
        freq[kept(7, draw)] += 1
    assert np.all(np.abs(freq / 1000 - 0.5) < 0.06), freq
    with pytest.raises(ValueError, match="'draw' must be >= 0"):
        method.score(ScoringContext(model=model, options={"draw": -1}))


def test_block_influence_drops_identity_keeps_negation() -> None:
    model = tiny_vit(depth=4)
    model.blocks[1] = nn.Identity()
    model.blocks[3] = Negate()
    method = get("block_influence")
    scores = method.score(ScoringContext(model=model, loader=tiny_loader(), options={"batches": 1}))
    assert scores.values[1] == pytest.approx(0.0, abs=1e-9)
    assert scores.values[3] == pytest.approx(2.0, abs=1e-9)
    assert scores.extra == {"batches": 1, "tokens": "all"}
    assert method.plan(scores, Budget.depth(3)).kept_blocks == [0, 2, 3]
    assert 3 in method.plan(scores, Budget.depth(1)).kept_blocks
    with pytest.raises(ValueError, match="needs a data loader"):
        method.score(ScoringContext(model=model))


def test_angular_finds_planted_span_and_survives_json(tmp_path) -> None:
    features = planted_features(depth=8, span=(3, 6))
    method = get("angular")
    scores = method.score(ScoringContext(model=blocks_only(8), features=features))
    assert len(scores.values) == 8
    assert set(scores.extra["span_distances"]) == {str(n) for n in range(1, 9)}
    # independent check of one stored distance: span [3, 6) is h_3 vs h_6 = cls[2] vs cls[5]
    u, v = features["cls"][2].astype(np.float64), features["cls"][5].astype(np.float64)
    cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    ref = float(np.mean(np.arccos(np.clip(cos, -1, 1)) / np.pi))
    assert scores.extra["span_distances"]["3"][3] == pytest.approx(ref, abs=1e-6)

    scores.save(tmp_path / "angular.json")  # the plan stage reads scores back from JSON
    loaded = Scores.load(tmp_path / "angular.json")
    plan = method.plan(loaded, Budget.depth(5))
    assert plan.kept_blocks == [0, 1, 2, 6, 7]
    assert plan.extra["dropped_span"] == [3, 6]
    assert plan.extra["span_distances"] == scores.extra["span_distances"]["3"]
    for n in (1, 2):
        start, end = method.plan(loaded, Budget.depth(8 - n)).extra["dropped_span"]
        assert 3 <= start and end <= 6 and end - start == n
    full = method.plan(loaded, Budget.depth(8))
    assert full.kept_blocks == list(range(8)) and full.extra["dropped_span"] is None
    Plan.from_dict(plan.to_dict())


def test_angular_needs_embed() -> None:
    method = get("angular")
    features = planted_features(depth=4)
    with pytest.raises(ValueError, match="'cls' .* and 'embed'"):
        method.score(ScoringContext(features=features["cls"]))
    with pytest.raises(ValueError, match=r"lack key\(s\) \['embed'\]"):
        method.score(ScoringContext(features={"cls": features["cls"]}))
    with pytest.raises(ValueError, match="must be \\(L, n, d\\)"):
        method.score(ScoringContext(features={"cls": features["cls"], "embed": features["embed"][:, :3]}))


def test_taylor_layer_block_scope_ranks_zeroed_block_last() -> None:
    model = tiny_vit(depth=4)
    with torch.no_grad():
        for p in model.blocks[2].parameters():
            p.zero_()
    method = get("taylor_layer")
    scores = method.score(ScoringContext(model=model, loader=tiny_loader(batches=3),
                                         options={"scope": "block", "batches": 2}))
    assert scores.values[2] == 0.0 and all(v > 0 for i, v in enumerate(scores.values) if i != 2)
    assert scores.extra["batches"] == 2 and scores.extra["samples"] == 6
    assert scores.extra["params"][0] == sum(p.numel() for p in model.blocks[0].parameters())
    assert method.plan(scores, Budget.depth(3)).kept_blocks == [0, 1, 3]


@pytest.mark.skipif(importlib.util.find_spec("petlprune.models.petl") is None,
                    reason="models/petl.py not written yet")
def test_taylor_layer_adapter_scope_ranks_zeroed_adapter_last() -> None:
    from petlprune.models.petl import inject_petl, mark_trainable, petl_modules

    model = tiny_vit(depth=4)
    inject_petl(model, "adapter")
    mark_trainable(model, "adapter")
    modules = petl_modules(model)
    with torch.no_grad():
        for i, mods in modules.items():
            for m in mods:
                for p in m.parameters():  # W_up = 0 at init would give every adapter importance 0
                    p.copy_(torch.randn_like(p) * 0.1 if i != 1 else torch.zeros_like(p))
    method = get("taylor_layer")
    scores = method.score(ScoringContext(model=model, loader=tiny_loader()))
    assert scores.extra["scope"] == "adapter"
    assert scores.values[1] == 0.0 and min(scores.values[i] for i in (0, 2, 3)) > 0
    assert method.plan(scores, Budget.depth(3)).kept_blocks == [0, 2, 3]


def test_options_are_checked() -> None:
    model = tiny_vit(depth=2)
    with pytest.raises(ValueError, match=r"unknown option 'batch' \(allowed: batches, scope\)"):
        get("taylor_layer").score(ScoringContext(model=model, loader=tiny_loader(), options={"batch": 2}))
    with pytest.raises(ValueError, match=r"'scope' must be one of \['adapter', 'block'\]"):
        get("taylor_layer").score(ScoringContext(model=model, loader=tiny_loader(), options={"scope": "x"}))
    with pytest.raises(ValueError, match="'batches' must be >= 1"):
        get("block_influence").score(ScoringContext(model=model, loader=tiny_loader(), options={"batches": 0}))
    with pytest.raises(ValueError, match="unknown option"):
        get("last_k").score(ScoringContext(model=model, options={"draw": 1}))
    with pytest.raises(ValueError, match="cannot keep 3 of 2 blocks"):
        get("angular").plan(Scores("angular", [0.1, 0.2], {"span_distances": {"1": [0.1, 0.2]}}),
                            Budget.depth(3))


def test_every_plan_keeps_depth_blocks_ascending() -> None:
    model = tiny_vit(depth=4)
    loader = tiny_loader()
    features = planted_features(depth=4, span=(1, 3))
    options = {"taylor_layer": {"scope": "block", "batches": 1}, "random": {"draw": 3}}
    for name in NAMES:
        method = get(name)
        ctx = ScoringContext(model=model, features=features, loader=loader, seed=1, options=options.get(name, {}))
        scores = method.score(ctx)
        assert len(scores.values) == 4 and scores.seconds >= 0
        for depth in range(1, 5):
            plan = method.plan(scores, Budget.depth(depth))
            assert plan.depth == depth == len(plan.kept_blocks)
            assert plan.kept_blocks == sorted(set(plan.kept_blocks))
            assert all(0 <= i < 4 for i in plan.kept_blocks)
            assert plan.method == name and plan.budget == f"d{depth}"
        with pytest.raises(ValueError):
            method.plan(scores, Budget.depth(5))


def test_angular_reads_features_npz_and_apply_keeps_planned_blocks(tmp_path) -> None:
    features = planted_features(depth=4, span=(1, 3), samples=16)
    np.savez(tmp_path / "features.npz", **features)
    method = get("angular")
    with np.load(tmp_path / "features.npz") as npz:
        scores = method.score(ScoringContext(features=npz))
    plan = method.plan(scores, Budget.depth(2))
    assert plan.kept_blocks == [0, 3]

    model = tiny_vit(depth=4)
    blocks = list(model.blocks)
    pruned = method.apply(model, plan)
    assert [id(b) for b in pruned.blocks] == [id(blocks[0]), id(blocks[3])]
    assert pruned(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
