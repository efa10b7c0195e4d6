"""SPLoPA (models/splopa.py) and Block-SPA (methods/spa_block.py)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from petlprune.measure import stored_params
from petlprune.methods import Budget, Plan, ScoringContext, get
from petlprune.models.backbone import create_backbone, save_backbone
from petlprune.models.build import build_model, load_task_model, save_task_model
from petlprune.models.petl import task_state_dict
from petlprune.models.splopa import block_layers, keep_cells
from petlprune.train import TrainConfig, fit

ARCH = "vit_tiny_patch16_224"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
OPTS = {"block": 8, "prototypes": 3}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bb") / "tiny.pt"
    save_backbone(path, create_backbone(ARCH, TINY, num_classes=3), timm_model=ARCH, timm_kwargs=TINY,
                  mean=[0.5] * 3, std=[0.5] * 3)
    return path


def _model(backbone, seed=1):
    torch.manual_seed(seed)
    model = build_model(backbone, petl="splopa", petl_options=OPTS, num_classes=5)
    with torch.no_grad():  # "fine-tuned": non-zero position weights
        for layer in block_layers(model).values():
            layer.positions.B.normal_(0, 0.5)
    return model


def _loader(batches=2, n=8, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g)) for _ in range(batches)]


def test_starts_as_backbone_and_prototypes_are_shared_and_get_every_layers_gradient(backbone):
    torch.manual_seed(3)
    model = build_model(backbone, petl="splopa", petl_options=OPTS, num_classes=5).eval()
    layers = block_layers(model)
    x = torch.randn(2, 3, 32, 32)
    for layer in layers.values():
        assert torch.equal(layer.effective_weight(), layer.base.weight)  # B = 0: ΔW = 0
    # one Prototypes object per layer shape: qkv (96, 32), proj (32, 32), fc1 (128, 32), fc2 (32, 128)
    protos = {id(m.prototypes) for m in layers.values()}
    assert len(protos) == 4
    assert layers["blocks.0.attn.qkv"].prototypes is layers["blocks.1.attn.qkv"].prototypes
    # stored once: task_state_dict names each prototype tensor once
    assert sum(k.endswith(".prototypes.u") for k in task_state_dict(model)) == 4
    # gradient from every layer: the shared u's gradient is the sum of per-layer gradients
    with torch.no_grad():
        for layer in layers.values():
            layer.positions.B.normal_()
    shared = layers["blocks.0.mlp.fc1"].prototypes
    per_layer = []
    for name in ("blocks.0.mlp.fc1", "blocks.1.mlp.fc1"):
        model.zero_grad()
        layers[name].effective_weight().sum().backward()
        per_layer.append(shared.u.grad.clone())
        assert per_layer[-1].abs().sum() > 0
    model.zero_grad()
    model(x).sum().backward()
    assert shared.u.grad.abs().sum() > 0
    model.zero_grad()
    (layers["blocks.0.mlp.fc1"].effective_weight().sum() + layers["blocks.1.mlp.fc1"].effective_weight().sum()).backward()
    torch.testing.assert_close(shared.u.grad, per_layer[0] + per_layer[1])


def test_delta_equals_explicit_kronecker_sum(backbone):
    model = _model(backbone)
    layer = block_layers(model)["blocks.1.attn.qkv"]
    B = layer.positions()[0].detach()  # (K, go, gi)
    u, v = layer.prototypes.u.detach(), layer.prototypes.v.detach()
    ref = sum(torch.kron(B[k], torch.outer(u[k], v[k])) for k in range(B.shape[0]))
    torch.testing.assert_close(layer.delta_weight().detach(), ref)
    x = torch.randn(4, 32)
    torch.testing.assert_close(layer(x), x @ (layer.base.weight + ref).T + layer.base.bias)


def test_masked_block_contributes_nothing_even_after_training(backbone):
    model = _model(backbone)
    layer = block_layers(model)["blocks.0.mlp.fc1"]  # (128, 32): grid 16 x 4
    kept = [c for c in range(64) if c % 3]  # drop every third block
    keep_cells(layer, kept)
    assert layer.positions.B.shape == (3, len(kept))
    fit(model, _loader(), TrainConfig(epochs=2, lr=0.05, weight_decay=0.1, warmup_epochs=0, batch_size=8), log=None)
    w = layer.effective_weight().detach().reshape(16, 8, 4, 8)
    for c in range(64):
        i, j = divmod(c, 4)
        block = w[i, :, j, :]
        assert (block.abs().sum() == 0) == (c not in kept), c
    # and the layer's output ignores inputs that only masked blocks read
    x = torch.zeros(1, 32)
    x[0, :8] = 1.0  # input column block 0
    out = layer(x) - layer.base.bias
    for i in range(16):
        if i * 4 not in kept:
            assert torch.all(out[0, i * 8:(i + 1) * 8].abs() < 1e-7)


def test_spa_block_schedule_plan_apply_store_and_reload(tmp_path, backbone):
    model = _model(backbone).eval()
    method = get("spa_block")
    opts = {"densities": [0.5, 0.25], "steps": 3, "recovery_epochs": 1}
    scores = method.score(ScoringContext(model=model, loader=_loader(), options=opts))
    assert sorted(scores.extra["densities"]) == [0.25, 0.5]
    assert scores.extra["schedule"][0] < 1 and 0.25 in scores.extra["schedule"]
    m50, m25 = scores.arrays["masks_p0.5"], scores.arrays["masks_p0.25"]
    assert (m25 <= m50).all()  # nested masks
    assert torch.equal(block_layers(model)["blocks.0.attn.qkv"].positions.cells, torch.arange(48))  # untouched
    plan = Plan.from_dict(json.loads(json.dumps(method.plan(scores, Budget.parse("p0.5")).to_dict())))
    with pytest.raises(ValueError, match="not scored"):
        method.plan(scores, Budget.parse("p0.3"))
    pruned = method.apply(copy.deepcopy(model), plan)
    layers = block_layers(pruned)
    for name, mask in plan.masks.items():
        assert sum(mask) == max(1, round(0.5 * len(mask)))
        assert layers[name].positions.B.shape[1] == sum(mask)
    # the kept blocks are the largest |W + ΔW| of the fine-tuned model (first step of the schedule)
    first = block_layers(model)["blocks.1.mlp.fc2"]
    kept_first = int(round(scores.extra["schedule"][0] * 64))
    top = set(torch.argsort(first.block_magnitude().flatten(), descending=True)[:kept_first].tolist())
    assert {i for i, v in enumerate(plan.masks["blocks.1.mlp.fc2"]) if v} <= top
    # stored: K |kept| per layer + prototypes once (+ head, + mask bits in the plan)
    stored = stored_params(plan, pruned)
    kept_blocks = sum(sum(m) for m in plan.masks.values())
    protos = 3 * 2 * 8 * 4  # K (u + v) b, four shapes
    assert stored["petl"] == 3 * kept_blocks + protos
    assert stored["plan"] == 1 + -(-sum(len(m) for m in plan.masks.values()) // 32)
    out = tmp_path / "model.pt"
    save_task_model(out, pruned, backbone=backbone, petl="splopa", petl_options=OPTS, num_classes=5, plan=plan)
    loaded, _ = load_task_model(out, backbone)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), pruned.eval()(x))
