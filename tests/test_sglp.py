"""SGLP (methods/sglp.py): keep rules, GradNorm from identical states, subset search, score → plan → apply.

The official GradNorm recipe and the finetuned ablation's rule: tests/test_sglp_official.py.
"""

from __future__ import annotations

import copy
import math
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from _helpers import SGLP_DEPTH as DEPTH
from _helpers import cls_features, make_context, reference_finetuned, tiny_data, two_batches
from _helpers import sglp_tiny_vit as tiny_vit
from petlprune.analysis.cka import cka_matrix
from petlprune.methods import Budget, Scores, get
from petlprune.methods.sglp import GradNormScorer, gradnorm, keep_counts, select_subset, token_cka


# --------------------------------------------------------------------------------- keep rules
def test_keep_counts_known_answers() -> None:
    assert keep_counts([1, 5, 6], 6, "proportional") == [1, 2, 3]  # 1 each, then 3 shared ∝ (0, 4, 5)
    assert keep_counts([1, 5, 6], 6, "largest_first") == [1, 3, 2]
    assert keep_counts([4, 4, 4], 6, "proportional") == [2, 2, 2]
    assert keep_counts([4, 4, 4], 2, "proportional") == [0, 1, 1]  # depth < K: ∝ length, ties → later
    assert keep_counts([3, 9], 12, "proportional") == [3, 9]


@pytest.mark.parametrize("rule", ["proportional", "largest_first"])
def test_keep_counts_invariants(rule: str) -> None:
    for k in range(1, 5):
        for lengths in {tuple(int(v) for v in np.random.default_rng(s).integers(1, 6, size=k)) for s in range(30)}:
            for depth in range(1, sum(lengths) + 1):
                counts = keep_counts(lengths, depth, rule)
                assert sum(counts) == depth
                assert all(0 <= c <= n for c, n in zip(counts, lengths, strict=True))
                if depth >= k:
                    assert min(counts) >= 1, (lengths, depth, counts)


def test_keep_counts_errors() -> None:
    with pytest.raises(ValueError, match="cannot keep 7 of 6"):
        keep_counts([3, 3], 7)
    with pytest.raises(ValueError, match="unknown rule"):
        keep_counts([3, 3], 2, "equal")


# ----------------------------------------------------------------------------------- GradNorm
# (the official context's recipe is checked against an independent reference in test_sglp_official.py)
def test_finetuned_gradnorm_equals_reference() -> None:
    model, batches = tiny_vit(), two_batches()
    scorer = GradNormScorer(model, batches, context="finetuned", seed=3)
    for kept in ([0, 1, 2, 3, 4, 5], [1, 3, 4], [5]):
        g, loss = reference_finetuned(model, kept, batches, seed=3)
        out = scorer.evaluate(kept)
        assert out["gradnorm"] == pytest.approx(g, rel=1e-6) and out["loss"] == pytest.approx(loss, rel=1e-6)
        assert gradnorm(model, kept, batches, context="finetuned", seed=3) == pytest.approx(g, rel=1e-6)


def test_finetuned_gradnorm_counts_every_weight() -> None:
    """All parameters take a gradient (as in the official grad_norm), not only the trainable PETL + head."""
    model, batches = tiny_vit(), two_batches()
    flags = [p.requires_grad for p in model.parameters()]
    g_all = gradnorm(model, [0, 2, 4], batches, context="finetuned")
    net = copy.deepcopy(model)
    net.blocks = nn.Sequential(*[net.blocks[i] for i in (0, 2, 4)])
    net.train()
    trainable = [p for p in net.parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        per_batch = []
        for x, y in batches:
            grads = torch.autograd.grad(F.cross_entropy(net(x), y), trainable)
            per_batch.append(math.sqrt(sum(float(g.double().square().sum()) for g in grads)))
    assert g_all > float(np.mean(per_batch)) > 0
    assert [p.requires_grad for p in model.parameters()] == flags  # the copy was unfrozen, not the model


@pytest.mark.parametrize("context", ["official", "finetuned"])
def test_candidates_scored_from_identical_states(context: str) -> None:
    """The official code reuses one network and never resets it: units loaded for earlier candidates
    stay in later ones, so the order changes G. Here each candidate starts from the same state, on the
    same batches and dropout seed: two orders, or the same candidate twice, give bit-identical values,
    and the model is left untouched."""
    model, batches = tiny_vit(), two_batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    candidates = [list(c) for c in combinations(range(DEPTH), 4)]
    forward = GradNormScorer(model, batches, context=context)
    backward = GradNormScorer(model, batches, context=context)
    g_forward = {tuple(c): forward.evaluate(c) for c in candidates}
    g_backward = {tuple(c): backward.evaluate(c) for c in reversed(candidates)}
    assert g_forward == g_backward
    again = [forward.evaluate(candidates[0]) for _ in range(3)]
    assert again == [g_forward[tuple(candidates[0])]] * 3
    assert len({v["gradnorm"] for v in g_forward.values()}) > 1  # the candidates do differ
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_gradnorm_bad_input() -> None:
    model, batches = tiny_vit(), two_batches()
    with pytest.raises(ValueError, match="context must be one of"):
        gradnorm(model, [0], batches, context="others")
    with pytest.raises(ValueError, match="at least one kept block"):
        gradnorm(model, [], batches, context="finetuned")
    with pytest.raises(ValueError, match=r"0\.\.5"):
        gradnorm(model, [0, 6], batches)
    with pytest.raises(ValueError, match="no batch"):
        gradnorm(model, [0], [])


# ------------------------------------------------------------------------------ subset search
def fake_scorer(values: dict[int, float]):
    """G = sum of per-block values, plus 5 when blocks 0..3 contribute exactly {1, 2} (greedy misses it)."""
    calls = []

    def score(kept):
        calls.append(tuple(kept))
        return sum(values[b] for b in kept) + (5.0 if set(kept) & {0, 1, 2, 3} == {1, 2} else 0.0)

    return score, calls


def test_select_subset_exhaustive() -> None:
    score, calls = fake_scorer({0: 1.0, 1: 0.5, 2: 0.4, 3: 3.0, 4: 0.0, 5: 9.0})
    out = select_subset(score, (0, 4), 2, others=[4, 5])
    assert out["kept"] == [1, 2] and out["search"] == "exhaustive" and len(out["networks"]) == math.comb(4, 2)
    assert out["value"] == pytest.approx(0.5 + 0.4 + 5.0 + 9.0)
    assert all({4, 5} <= set(c) for c in calls)  # every candidate network holds the other segments
    low = select_subset(score, (0, 4), 2, others=[4, 5], maximize=False)  # the smallest score instead
    assert low["kept"] == [0, 2] and low["value"] == pytest.approx(1.0 + 0.4 + 9.0)


def test_select_subset_greedy_above_cap() -> None:
    score, _ = fake_scorer({0: 1.0, 1: 0.5, 2: 0.4, 3: 3.0})
    out = select_subset(score, (0, 4), 2, max_subsets=5)  # C(4, 2) = 6 > 5
    # greedy elimination drops 2 first ({0, 1, 3} scores 4.5, the best of the four drops), then keeps
    # the best pair of {0, 1, 3}: {0, 3} (4.0); it misses the exhaustive optimum {1, 2} (5.9)
    assert out["search"] == "greedy" and out["kept"] == [0, 3] and out["value"] == pytest.approx(4.0)
    assert out["networks"] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], [1, 3], [0, 3], [0, 1]]
    assert select_subset(score, (0, 4), 4) == {"kept": [0, 1, 2, 3], "value": None, "search": "whole", "networks": []}
    assert select_subset(score, (0, 4), 0)["kept"] == []


# ----------------------------------------------------------------------------- the method


def test_token_cka_streams_like_cka_matrix() -> None:
    model, ds = tiny_vit(), tiny_data(30)
    loader = DataLoader(ds, batch_size=7, shuffle=False)
    cls = cls_features(model, ds.tensors[0])
    np.testing.assert_allclose(token_cka(model, loader, tokens="cls").numpy(), cka_matrix(cls).numpy(), rtol=1e-9)
    with torch.no_grad():
        outs = model.forward_intermediates(ds.tensors[0], output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True)
    tokens = [torch.cat([prefix, patch], 1).flatten(1) for patch, prefix in outs]  # (n, T·d) per block
    streamed = token_cka(model, loader, tokens="all", batch_size=8)  # CKA batches 8, 8, 7, 7 across loader batches
    np.testing.assert_allclose(streamed.numpy(), cka_matrix(tokens, batch_size=8).numpy(), rtol=1e-9)
    capped = token_cka(model, loader, tokens="all", batch_size=5, max_samples=10)
    np.testing.assert_allclose(capped.numpy(), cka_matrix([t[:10] for t in tokens], batch_size=5).numpy(), rtol=1e-9)


def test_score_plan_apply(tmp_path) -> None:
    method = get("sglp")
    ctx = make_context(k=2)
    scores = method.score(ctx)
    extra = scores.extra
    cka = np.array(extra["cka"])
    assert cka.shape == (DEPTH, DEPTH) and np.allclose(np.diag(cka), 1.0)
    np.testing.assert_allclose(scores.values, cka.sum(0))
    assert extra["k"] == 2 and len(extra["segments"]) == 2 and len(extra["losses"]) == 6
    assert extra["gradnorm_samples"] == 16

    scores.save(tmp_path / "sglp.json")  # JSON round trip: plan works from the stored file alone
    stored = Scores.load(tmp_path / "sglp.json")
    segments = [tuple(s) for s in extra["segments"]]
    assert extra["context"] == "official" and extra["pick"] == "largest_g" and extra["init_seed"] == ctx.seed
    reference = GradNormScorer(ctx.model, [(x, y) for x, y in list(ctx.loader)[:2]], seed=ctx.seed)
    for depth in range(1, DEPTH + 1):
        plan = method.plan(stored, Budget.parse(f"d{depth}"))
        assert plan.depth == depth == len(plan.kept_blocks)
        counts = keep_counts([b - a for a, b in segments], depth)
        assert plan.extra["keep_per_segment"] == counts
        for (a, b), r in zip(segments, counts, strict=True):
            inside = [i for i in plan.kept_blocks if a <= i < b]
            assert len(inside) == r
            if 0 < r < b - a:  # the kept subset has the largest G among all subsets of that size,
                # each scored with only its own blocks fine-tuned in the random network (official)
                best = max(combinations(range(a, b), r), key=lambda c: reference(c)["gradnorm"])
                assert inside == list(best)
    plan = method.plan(stored, Budget.parse("d3"))
    assert 0 < plan.decision_seconds <= scores.seconds  # this depth's own cost, not every depth's
    pruned = method.apply(copy.deepcopy(ctx.model), plan)
    assert len(pruned.blocks) == 3
    assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_score_options() -> None:
    method = get("sglp")
    scores = method.score(make_context(k="auto", depths=[3], context="finetuned", keep_rule="largest_first", max_subsets=2))
    assert 1 <= scores.extra["k"] <= 6
    plan = method.plan(scores, Budget.parse("d3"))
    assert plan.depth == 3
    other = next(d for d in range(1, DEPTH + 1) if keep_counts(
        [b - a for a, b in scores.extra["segments"]], d, "largest_first") != plan.extra["keep_per_segment"])
    with pytest.raises(ValueError, match="re-run score"):
        method.plan(scores, Budget.parse(f"d{other}"))
    with pytest.raises(ValueError, match="unknown option"):
        method.score(make_context(segments=3))
    with pytest.raises(ValueError, match="'k'"):
        method.score(make_context(k=0))
    for key, value in (("context", "others"), ("pick", "largest"), ("init_seed", -1), ("init_seed", 1.5),
                       ("gradnorm_batches", 0)):
        with pytest.raises(ValueError, match=repr(key)):
            method.score(make_context(**{key: value}))
    with pytest.raises(ValueError, match="alpha budget"):
        method.plan(scores, Budget.parse("a0.3"))


def test_score_is_deterministic_and_all_tokens_run() -> None:
    method = get("sglp")
    a = method.score(make_context(k=2, depths=[4]))
    b = method.score(make_context(k=2, depths=[4]))
    def decisions(scores):  # everything but the timings
        return [{r: {k: v for k, v in c.items() if k != "seconds"} for r, c in seg["choices"].items()}
                for seg in scores.extra["selection"]]

    assert decisions(a) == decisions(b) and a.values == b.values and a.extra["gradnorm"] == b.extra["gradnorm"]
    tokens = method.score(make_context(k=2, depths=[4], tokens="all", cka_batch_size=12))
    assert np.array(tokens.extra["cka"]).shape == (DEPTH, DEPTH)
