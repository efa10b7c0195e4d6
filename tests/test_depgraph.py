"""DepGraph width pruning (methods/depgraph.py): criterion, parameter matching, slicing, reload."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from petlprune.measure import count_params
from petlprune.methods import Budget, Plan, ScoringContext, get
from petlprune.models.backbone import create_backbone, save_backbone
from petlprune.models.build import build_model, load_task_model, save_task_model
from petlprune.models.petl import petl_modules
from petlprune.models.surgery import keep_blocks

ARCH = "vit_tiny_patch16_224"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bb") / "tiny.pt"
    save_backbone(path, create_backbone(ARCH, TINY, num_classes=3), timm_model=ARCH, timm_kwargs=TINY,
                  mean=[0.5] * 3, std=[0.5] * 3)
    return path


def _model(backbone):
    torch.manual_seed(1)
    model = build_model(backbone, petl="adapter", num_classes=5)
    with torch.no_grad():  # a "fine-tuned" adapter: non-zero up-projections
        for mods in petl_modules(model).values():
            for m in mods:
                m.up.weight.normal_(0, 0.1)
    return model.eval()


def _loader(batches=2, n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g)) for _ in range(batches)]


@pytest.fixture(scope="module")
def scored(backbone):
    model = _model(backbone)
    scores = get("depgraph").score(ScoringContext(model=model, loader=_loader(), options={"batches": 2}))
    return model, scores


def test_mlp_importance_is_the_fc1_fc2_group_taylor(backbone, scored):
    """torch-pruning's group for fc1 = fc1 rows + fc2 columns; importance = mean of Σ|w·g| of both."""
    _, scores = scored
    model = _model(backbone)
    model.requires_grad_(True)
    for x, y in _loader():
        torch.nn.functional.cross_entropy(model(x), y).backward()
    fc1, fc2 = model.blocks[1].mlp.base.fc1, model.blocks[1].mlp.base.fc2
    ref = ((fc1.weight * fc1.weight.grad).abs().sum(1) + (fc2.weight * fc2.weight.grad).abs().sum(0)) / 2
    torch.testing.assert_close(torch.as_tensor(scores.arrays["mlp_importance"][1]), ref.double(), rtol=1e-5,
                               atol=1e-12)
    assert scores.arrays["attn_importance"].shape == (4, 2, 16)
    assert all(not p.requires_grad for n, p in scored[0].named_parameters() if "blocks.0.attn" in n)


def test_plan_matches_depth_param_count_and_pruned_model_runs(scored):
    model, scores = scored
    method = get("depgraph")
    for depth in (1, 2, 3):
        target = count_params(keep_blocks(copy.deepcopy(model), list(range(depth))))["forward"]
        plan = Plan.from_dict(json.loads(json.dumps(method.plan(scores, Budget.depth(depth, "matched")).to_dict())))
        pruned = method.apply(copy.deepcopy(model), plan)
        got = count_params(pruned)["forward"]
        assert abs(got - target) / target < 0.03, (depth, got, target)
        assert got == plan.extra["params"] and plan.extra["target_params"] == target
        assert plan.budget == "matched" and plan.kept_blocks == [0, 1, 2, 3]
        assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    full = method.plan(scores, Budget.depth(4))
    assert full.extra["ratio"] == 0.0


def test_slicing_equals_zeroing_the_pruned_channels(scored):
    """Independent reference: the unpruned model with the pruned q/k/v rows, proj columns and fc1 rows
    zeroed computes the same function (softmax temperature kept at 1/sqrt(original head_dim))."""
    model, scores = scored
    plan = get("depgraph").plan(scores, Budget.depth(2))
    assert 0 < plan.extra["keep_head_dims"] < 16
    pruned = get("depgraph").apply(copy.deepcopy(model), plan)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for block, mlp_idx, heads in zip(ref.blocks, plan.extra["keep"]["mlp"], plan.extra["keep"]["attn"],
                                         strict=True):
            attn, mlp = block.attn, block.mlp.base
            drop_mlp = sorted(set(range(mlp.fc1.out_features)) - set(mlp_idx))
            mlp.fc1.weight[drop_mlp] = 0
            mlp.fc1.bias[drop_mlp] = 0  # GELU(0) = 0: fc2's columns then see nothing
            for h, kept in enumerate(heads):
                for j in sorted(set(range(16)) - set(kept)):
                    for part in range(3):
                        attn.qkv.weight[part * 32 + h * 16 + j] = 0
                        attn.qkv.bias[part * 32 + h * 16 + j] = 0
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(pruned(x), ref(x), rtol=1e-4, atol=1e-5)
    attn = pruned.blocks[0].attn.base if hasattr(pruned.blocks[0].attn, "base") else pruned.blocks[0].attn
    k = plan.extra["keep_head_dims"]
    assert (attn.head_dim, attn.attn_dim, attn.qkv.out_features, attn.proj.in_features) == (k, 2 * k, 6 * k, 2 * k)


def test_save_load_roundtrip_keeps_adapters_and_head(tmp_path, backbone, scored):
    model, scores = scored
    method = get("depgraph")
    plan = method.plan(scores, Budget.depth(2))
    pruned = method.apply(copy.deepcopy(model), plan)
    with torch.no_grad():  # re-training changes adapters and head only
        pruned.head.weight.add_(0.5)
    before = {k: v.clone() for k, v in model.named_parameters() if "adapter" in k}
    for k, v in pruned.named_parameters():
        if "adapter" in k:
            assert torch.equal(v, before[k]), k  # adapters untouched (shapes and values)
    out = tmp_path / "model.pt"
    save_task_model(out, pruned, backbone=backbone, petl="adapter", petl_options={}, num_classes=5, plan=plan)
    loaded, info = load_task_model(out, backbone)
    assert info["plan"]["method"] == "depgraph"
    assert [tuple(p.shape) for p in loaded.parameters()] == [tuple(p.shape) for p in pruned.parameters()]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), pruned.eval()(x))
    assert loaded.head.weight.shape == model.head.weight.shape


def test_options_and_budgets_are_checked(scored):
    method = get("depgraph")
    with pytest.raises(ValueError, match="unknown option"):
        method.score(ScoringContext(model=scored[0], loader=_loader(), options={"batch": 1}))
    with pytest.raises(ValueError, match="does not take"):
        method.plan(scored[1], Budget.parse("p0.5"))
