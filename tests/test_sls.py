"""SLS: the depth rule on hand-made curves, early stop vs the full curve, plans, apply."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from petlprune.methods import Budget, Plan, Scores, ScoringContext, get
from petlprune.methods.sls import select_depth, walk_depth


def _reference_depth(scores, alpha):
    """The equivalent form of book/methods/specs/sls.md: the smallest L (1-based) with SC_j >= alpha * SC_N for all j in [L, N]."""
    n = len(scores)
    if scores[-1] <= 0:
        return n
    t = alpha * scores[-1]
    return min(L for L in range(1, n + 1) if all(s >= t for s in scores[L - 1:]))


@pytest.mark.parametrize(
    ("scores", "alpha", "depth"),
    [
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], 0.3, 3),  # monotone: 0.2 < 0.3 stops, keeps 1..3
        ([0.5, 0.6, 0.1, 0.7, 0.8, 0.9, 1.0], 0.3, 4),  # a dip in the middle stops the walk there
        ([0.5, 0.4, -0.1], 0.3, 3),  # SC_N < 0: keep all
        ([0.5, 0.0], 0.3, 2),  # SC_N = 0: keep all
        ([0.2, -0.05, 0.3, 0.4], 0.0, 3),  # alpha = 0: only negative scores stop the walk
        ([0.2, 0.1, 0.3, 0.4], 0.0, 1),
        ([0.4] * 6, 0.3, 1),  # all equal: nothing stops the walk, one block kept
        ([0.4] * 6, 1.0, 1),
        ([0.1, 0.5, 0.4, 0.5], 1.0, 4),
        ([0.7], 0.3, 1),
    ],
)
def test_select_depth_hand_made_curves(scores, alpha, depth):
    assert select_depth(scores, alpha) == depth == _reference_depth(scores, alpha)


def test_select_depth_matches_reference_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(500):
        scores = rng.uniform(-0.2, 1.0, size=int(rng.integers(1, 13))).round(2).tolist()
        alpha = float(rng.choice([0.0, 0.1, 0.3, 0.5, 0.9, 1.0]))
        assert select_depth(scores, alpha) == _reference_depth(scores, alpha)


def test_walk_reads_only_what_it_needs_and_edge_notes():
    read = []
    curve = [0.9, 0.1, 0.5, 0.6, 0.8, 1.0]
    d = walk_depth(lambda i: read.append(i) or curve[i], 6, 0.3)
    assert d.depth == 3 and d.stopped_at == 1 and d.threshold == pytest.approx(0.3)
    assert read == d.evaluated == [5, 4, 3, 2, 1]  # block 0 never read
    d = walk_depth(lambda i: [0.3, -0.2][i], 2, 0.3)
    assert d.depth == 2 and d.evaluated == [1] and "keep" not in d.note and "all 2 blocks kept" in d.note
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        select_depth([0.1, 0.2], 1.5)
    with pytest.raises(ValueError, match="block 0 is NaN"):
        select_depth([float("nan"), 0.2], 0.3)


def planted_features(separation=(0.0, 0.2, 0.5, 3.0, 4.0, 5.0), n=45, d=6, seed=0):
    """features.npz-like mapping: block i's CLS features separate 3 classes by separation[i]."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    means = np.eye(d)[labels]  # (n, d)
    cls = np.stack([s * means + rng.normal(size=(n, d)) for s in separation]).astype(np.float32)
    return {"cls": cls, "embed": rng.normal(size=(n, d)).astype(np.float32), "labels": labels}


@pytest.fixture(scope="module")
def sls_scores():
    feats = planted_features()
    sls = get("sls")
    early = sls.score(ScoringContext(features=feats, seed=0, options={"perplexity": 8}))
    full = sls.score(ScoringContext(features=feats, seed=0, options={"perplexity": 8, "full_curve": True}))
    return early, full


def test_early_stop_gives_the_full_curve_depth(sls_scores):
    early, full = sls_scores
    assert all(v is not None for v in full.values)
    assert full.values[-1] > 0.5 and full.values[0] < 0.3 * full.values[-1]  # the planted structure shows
    depth = select_depth(full.values, 0.3)
    assert early.extra["decision"]["depth"] == full.extra["decision"]["depth"] == depth
    embedded = early.extra["decision"]["scored_blocks"]
    assert embedded == list(range(depth - 2, 6)) and early.extra["decision"]["early_stop"]  # suffix down to the stop
    assert early.values[: depth - 2] == [None] * (depth - 2)
    for i in embedded:  # same seed → the same embedding and score whether or not the walk stopped early
        assert early.values[i] == full.values[i]
    np.testing.assert_array_equal(early.arrays["embedded_blocks"], embedded)
    assert early.arrays["embeddings"].shape == (len(embedded), 45, 2)
    assert set(early.extra) >= {"calinski_harabasz", "davies_bouldin"} and "silhouette" not in early.extra


def test_plans_for_alpha_and_depth_budgets(sls_scores):
    early, full = sls_scores
    sls = get("sls")
    depth = early.extra["decision"]["depth"]
    plan = sls.plan(early, Budget.parse("a0.3"))
    assert plan.depth == depth and plan.kept_blocks == list(range(depth)) and plan.is_prefix
    assert plan.extra["threshold"] == pytest.approx(0.3 * early.values[-1])
    assert sls.plan(full, Budget.parse("a0")).depth == select_depth(full.values, 0.0)
    partial = Scores("sls", [None, 0.1, 0.8, 0.9], {"decision": {"alpha": 0.3}})  # stopped at block 1
    assert sls.plan(partial, Budget.parse("a0.5")).depth == 3
    with pytest.raises(ValueError, match="needs the score of block 0, .* full_curve: true"):
        sls.plan(partial, Budget.parse("a0.1"))  # this walk goes below the early stop
    assert sls.plan(early, Budget.parse("d2")).kept_blocks == [0, 1]
    matched = sls.plan(early, Budget.depth(5, text="matched"))
    assert matched.budget == "matched" and matched.kept_blocks == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="takes a"):
        sls.plan(early, Budget.parse("r0.5"))
    with pytest.raises(ValueError, match="cannot keep 7 of 6"):
        sls.plan(early, Budget.parse("d7"))


def test_last_k_at_the_depth_sls_chose_is_sls_own_plan(sls_scores):
    """Why no tier runs last_k at `matched`: the two Plans keep the same blocks, so the re-trained models
    would be one model trained twice (the apply step is the same prefix cut)."""
    early, _ = sls_scores
    sls_plan = get("sls").plan(early, Budget.parse("a0.3"))
    last_k = get("last_k")
    last_k_scores = last_k.score(ScoringContext(model=None, num_blocks=len(early.values)))
    last_k_plan = last_k.plan(last_k_scores, Budget.depth(sls_plan.depth, text="matched"))
    assert last_k_plan.kept_blocks == sls_plan.kept_blocks and last_k_plan.is_prefix


def test_scores_and_plan_json_round_trip(sls_scores, tmp_path):
    early, _ = sls_scores
    early.save(tmp_path / "sls.json")
    assert (tmp_path / "sls.npz").is_file()
    back = Scores.load(tmp_path / "sls.json")
    assert back.values == early.values and back.extra == early.extra and back.seconds == early.seconds
    np.testing.assert_array_equal(back.arrays["embeddings"], early.arrays["embeddings"])
    plan = get("sls").plan(back, Budget.parse("a0.3"))
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan


def test_ablation_options():
    feats = planted_features()
    sls = get("sls")
    raw = sls.score(ScoringContext(features=feats, options={"space": "raw", "full_curve": True}))
    assert not raw.arrays and raw.extra["space"] == "raw" and raw.values[-1] > raw.values[0]
    assert raw.extra["calinski_harabasz"][-1] > raw.extra["calinski_harabasz"][0]
    db = sls.score(ScoringContext(features=feats, options={"space": "raw", "criterion": "davies_bouldin",
                                                            "full_curve": True}))
    # Davies–Bouldin is lower-is-better: the rule runs on 1/DB, raw DB kept for the report
    np.testing.assert_allclose(db.values, [1 / v for v in db.extra["davies_bouldin"]])
    assert db.extra["rule_on"] == "1/davies_bouldin"
    assert db.extra["decision"]["depth"] == select_depth(db.values, 0.3)
    with pytest.raises(ValueError, match=r"unknown option 'alpah'"):
        sls.score(ScoringContext(features=feats, options={"alpah": 0.3}))
    with pytest.raises(ValueError, match="'space' must be one of"):
        sls.score(ScoringContext(features=feats, options={"space": "umap"}))
    with pytest.raises(ValueError, match="needs the block features"):
        sls.score(ScoringContext())


def test_apply_is_prefix_blocks_then_original_norm_and_head():
    from petlprune.models.backbone import create_backbone
    from petlprune.models.petl import inject_petl, petl_modules

    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
    model = inject_petl(create_backbone("vit_tiny_patch16_224", kwargs, num_classes=5), "adapter").eval()
    with torch.no_grad():
        for mods in petl_modules(model).values():
            for p in mods[0].parameters():
                p.normal_(0, 0.3)
    original = copy.deepcopy(model)
    plan = get("sls").plan(Scores("sls", [0.1, 0.5, 0.9, 1.0]), Budget.parse("a0.3"))
    assert plan.depth == 2
    pruned = get("sls").apply(model, plan)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = original.norm_pre(original._pos_embed(original.patch_embed(x)))
        for blk in original.blocks[:2]:
            tokens = blk(tokens)
        want = original.head(original.norm(tokens)[:, 0])
        torch.testing.assert_close(pruned(x), want)
    assert len(pruned.blocks) == 2
