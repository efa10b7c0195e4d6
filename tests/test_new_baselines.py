"""Issue 25's baselines with known answers: TOAST's bridge, attention-only drop, P3B, recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import tiny_loader, tiny_vit
from petlprune.methods import Budget, Plan, Scores, ScoringContext, get
from petlprune.methods.base import check_method_config


# ------------------------------------------------------------------ TOAST's linear bridge
def test_least_squares_recovers_a_linear_span_and_identity() -> None:
    from petlprune.models.bridge import least_squares_map

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    a = torch.randn(16, 16, generator=g)
    w = least_squares_map(x, x @ a.T)
    assert (x @ w.T - x @ a.T).abs().max() <= 1e-5
    assert torch.allclose(w, a, atol=1e-5)
    assert (least_squares_map(x, x) - torch.eye(16)).abs().max() <= 1e-5


def test_removed_spans() -> None:
    from petlprune.models.bridge import removed_spans, span_boundaries

    assert removed_spans([0, 1, 2], 6) == [(3, 6)]
    assert removed_spans([2, 3, 5], 8) == [(0, 2), (4, 5), (6, 8)]
    assert span_boundaries([2, 3, 5], 8) == [(0, 2, 0, "before"), (4, 5, 1, "after"), (6, 8, 2, "after")]


def _linear_blocks(model: torch.nn.Module, blocks: list[int]) -> None:
    """Make ``blocks`` linear maps of the stream: attention and MLP output a fixed linear map of x."""
    g = torch.Generator().manual_seed(3)
    for i in blocks:
        blk = model.blocks[i]
        m = torch.randn(model.embed_dim, model.embed_dim, generator=g) * 0.1

        def fwd(x, *args, _m=m, **kwargs):
            return x + x @ _m.T

        blk.forward = fwd


@pytest.mark.parametrize("kept", [[0, 1], [0, 3], [2, 3]])
def test_linear_bridge_reproduces_a_removed_linear_span(kept: list[int]) -> None:
    """Blocks that are linear maps, removed and bridged: the pruned model's logits equal the unpruned's."""
    model = tiny_vit(depth=4).eval()
    removed = [i for i in range(4) if i not in kept]
    _linear_blocks(model, removed)
    images = torch.cat([x for x, _ in tiny_loader(batches=4)])
    with torch.no_grad():
        want = model(images)
    method = get("last_k")
    plan = Plan("last_k", "d2", 2, kept, extra={"bridge": "linear", "bridge_samples": 12})
    data = [(images[:6], None), (images[6:], None)]
    maps = __import__("petlprune.models.bridge", fromlist=["fit_bridges"]).fit_bridges(model, kept, data, 12)
    from petlprune.models.bridge import load_bridge_maps

    pruned = method.apply(model, plan)
    load_bridge_maps(pruned, kept, 4, maps)
    with torch.no_grad():
        got = pruned(images)
    assert (got - want).abs().max() <= 1e-4
    # identity bridge (plain removal) does not reproduce it: the test can fail
    plain = get("last_k").apply(tiny_vit(depth=4).eval(), Plan("last_k", "d2", 2, kept))
    assert not torch.allclose(plain(images), want, atol=1e-3)


def test_bridge_is_stored_frozen_and_counted() -> None:
    from petlprune.measure import stored_params
    from petlprune.models.petl import inject_petl, mark_trainable, task_state_dict

    model = tiny_vit(depth=4)
    inject_petl(model, "adapter", bottleneck=4)
    mark_trainable(model, "adapter")
    plan = Plan("last_k", "d2", 2, [0, 1], extra={"bridge": "linear"})
    method = get("last_k")
    pruned = method.mark_trainable(method.apply(model, plan), "adapter")
    keys = [k for k in task_state_dict(pruned) if "bridge" in k]
    assert keys == ["blocks.1.bridge_after.weight"]
    assert not pruned.blocks[1].bridge_after.weight.requires_grad
    assert stored_params(plan, pruned)["backbone"] == 32 * 32


# ------------------------------------------------------------------ recovery adapters+last{n}
def test_recover_last_trains_and_stores_the_last_blocks() -> None:
    from petlprune.measure import stored_params
    from petlprune.models.petl import inject_petl, mark_trainable

    model = tiny_vit(depth=4)
    inject_petl(model, "adapter", bottleneck=4)
    mark_trainable(model, "adapter")
    method = get("last_k")
    scores = method.score(ScoringContext(num_blocks=4, options={"recover_last": 2}))
    plan = method.plan(scores, Budget.depth(3))
    assert plan.extra == {"recover_last": 2}
    pruned = method.mark_trainable(method.apply(model, plan), "adapter")
    def backbone(block: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for n, p in block.named_parameters() if ".adapter." not in n]

    assert all(p.requires_grad for b in (1, 2) for p in backbone(pruned.blocks[b]))
    assert not any(p.requires_grad for p in backbone(pruned.blocks[0]))  # not recovered: frozen
    recovered = sum(p.numel() for b in (1, 2) for p in backbone(pruned.blocks[b]))
    assert recovered > 0 and stored_params(plan, pruned)["backbone"] == recovered


def test_plain_last_k_plan_unchanged() -> None:
    plan = get("last_k").plan(get("last_k").score(ScoringContext(num_blocks=6)), Budget.depth(3))
    assert plan.extra == {}


# ------------------------------------------------------------------ attention-only drop
def test_attention_drop_of_zero_attention_keeps_logits() -> None:
    model = tiny_vit(depth=4).eval()
    for i in (1, 3):  # these attention sub-layers output zero: cos(h, h + 0) = 1, the most similar
        torch.nn.init.zeros_(model.blocks[i].attn.proj.weight)
        torch.nn.init.zeros_(model.blocks[i].attn.proj.bias)
    images = torch.cat([x for x, _ in tiny_loader()])
    with torch.no_grad():
        want = model(images)
    method = get("attn_drop")
    scores = method.score(ScoringContext(model=model, loader=tiny_loader()))
    plan = method.plan(scores, Budget.parse("s2"))
    assert plan.extra["dropped_attention"] == [1, 3] and plan.depth == 4
    params = sum(p.numel() for p in model.parameters())
    pruned = method.apply(model, plan)
    with torch.no_grad():
        got = pruned(images)
    assert torch.allclose(got, want, atol=1e-6)
    assert sum(p.numel() for p in pruned.parameters()) < params  # the sub-layers are gone, not masked
    # a plan that drops a non-zero attention changes the logits (the test can fail)
    other = get("attn_drop").apply(tiny_vit(depth=4).eval(), Plan("attn_drop", "s1", 4, [0, 1, 2, 3],
                                                                 extra={"dropped_attention": [0]}))
    with torch.no_grad():
        assert not torch.allclose(other(images), want, atol=1e-3)


# ------------------------------------------------------------------ P3B block benefit
def test_block_benefit_ranks_a_noise_block_last() -> None:
    rng = np.random.default_rng(0)
    n, d, classes = 300, 8, 3
    labels = rng.integers(0, classes, n)
    centers = rng.normal(size=(classes, d)) * 3
    h0 = rng.normal(size=(n, d))
    stream = [h0]
    for i in range(4):  # blocks 0, 1, 3 add class signal; block 2 adds pure noise
        step = rng.normal(size=(n, d)) * 4 if i == 2 else centers[labels] * 0.5
        stream.append(stream[-1] + step)
    feats = {"embed": stream[0].astype(np.float32), "cls": np.stack(stream[1:]).astype(np.float32), "labels": labels}
    scores = get("p3b").score(ScoringContext(features=feats, options={"steps": 300}))
    assert int(np.argmin(scores.values)) == 2 and scores.values[2] < 0
    plan = get("p3b").plan(scores, Budget.depth(3))
    assert plan.kept_blocks == [0, 1, 3]


# ------------------------------------------------------------------ options checked before any job
@pytest.mark.parametrize(("instance", "method", "options", "budgets", "key"), [
    ("last_k_rec2", "last_k", {"recover_last": -1}, ["d6"], "methods.last_k_rec2.recover_last"),
    ("last_k_rec2", "last_k", {"recover_last": 7}, ["d6"], "budgets.last_k_rec2"),
    ("last_k_bridge", "last_k", {"bridge": "mlp"}, ["d6"], "methods.last_k_bridge.bridge"),
    ("last_k_bridge", "last_k", {"bridge_samples": 0}, ["d6"], "methods.last_k_bridge.bridge_samples"),
    ("attn_drop", "attn_drop", {}, ["d6"], "budgets.attn_drop"),
    ("attn_drop", "attn_drop", {}, ["s1.5"], "budgets.attn_drop"),
    ("p3b", "p3b", {"steps": 0}, ["d6"], "methods.p3b.steps"),
])
def test_new_options_and_budgets_checked(instance, method, options, budgets, key) -> None:
    with pytest.raises(ValueError, match=f"config key {key}"):
        check_method_config(instance, method, options, budgets)


def test_valid_new_configs_pass() -> None:
    assert check_method_config("x", "last_k", {"recover_last": 2, "bridge": "linear"}, ["d6"])["recover_last"] == 2
    check_method_config("attn_drop", "attn_drop", {"batches": 4}, ["s4"])
    check_method_config("p3b", "p3b", {}, ["d6", "matched"])
    assert Scores  # noqa: B018 - imported for type use


# ------------------------------------------------------------------ the workflow refuses them before any job
@pytest.mark.parametrize(("mutate", "key"), [
    (lambda c: c["methods"]["last_k_rec1"].update(recover_last=4), "budgets.last_k_rec1"),
    (lambda c: c["methods"]["last_k_bridge"].update(bridge="mlp"), "methods.last_k_bridge.bridge"),
    (lambda c: c["budgets"].update(attn_drop=["d2"]), "budgets.attn_drop"),
])
def test_snakemake_refuses_bad_new_options_naming_the_key(mutate, key, tmp_path) -> None:
    from _helpers import smoke, snakemake_dry_run

    cfg = smoke()
    mutate(cfg)
    result = snakemake_dry_run(cfg, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and key in output, output[-2000:]
    assert "Job stats" not in output


# ------------------------------------------------------------------ LoRA-drop
def _lora_vit():
    from petlprune.models.petl import inject_petl, mark_trainable

    model = tiny_vit(depth=4)
    inject_petl(model, "lora", rank=2, alpha=2.0, targets=["qkv", "fc1"])
    for p in model.parameters():  # B = 0 at init: give every LoRA an output to measure
        if p.dim() == 2 and p.shape[1] == 2:
            torch.nn.init.normal_(p, std=0.1)
    return mark_trainable(model, "lora")


def test_lora_drop_shared_module_gets_the_gradient_of_every_position_it_serves() -> None:
    from petlprune.models.surgery import adapter_positions

    model = _lora_vit()
    method = get("lora_drop")
    scores = method.score(ScoringContext(model=model, loader=tiny_loader(), options={"batches": 2}))
    assert abs(sum(scores.values) - 1.0) < 1e-9 and len(scores.values) == 8
    plan = method.plan(scores, Budget.parse("r0.5"))
    groups = plan.extra["shared_groups"]
    assert len(groups) == 2  # qkv and fc1 LoRAs have different shapes: one shared LoRA per kind
    model = method.apply(model, plan)
    positions = adapter_positions(model)
    for group in groups:
        shared = positions[group[0]].adapter
        assert len(group) >= 2 and all(positions[p].adapter is shared for p in group)
    calls: dict[int, list[float]] = {g[0]: [] for g in groups}
    for g in groups:
        positions[g[0]].adapter.register_full_backward_hook(
            lambda m, gin, gout, _k=g[0]: calls[_k].append(float(gout[0].abs().sum())))
    images, labels = tiny_loader()[0]
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    for g in groups:  # one incoming gradient per position that shares the module, none of them zero
        assert len(calls[g[0]]) == len(g) and all(c > 0 for c in calls[g[0]])
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in positions[g[0]].adapter.parameters())


def test_lora_drop_equal_storage_with_dropping() -> None:
    from petlprune.measure import stored_params

    model = _lora_vit()
    method = get("lora_drop")
    scores = method.score(ScoringContext(model=model, loader=tiny_loader(), options={"batches": 2}))
    shared = method.plan(scores, Budget.parse("r0.5"))
    drop = method.plan(Scores("lora_drop", scores.values, {**scores.extra, "options": {"share": "none"}}),
                       Budget.parse("r0.5"))
    a = stored_params(shared, method.apply(_lora_vit(), shared))
    b = stored_params(drop, method.apply(_lora_vit(), drop))
    assert 0.8 * b["petl"] <= a["petl"] <= b["petl"]  # at most what dropping stores (a kind pruned whole)
