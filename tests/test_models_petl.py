"""PETL injection: exact identity at init, the published formulas, trainability, task weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from petlprune.models.backbone import create_backbone
from petlprune.models.petl import (
    PETL_METHODS,
    Bottleneck,
    ConvBypass,
    LowRank,
    Parallel,
    TaskStateError,
    inject_petl,
    load_task_state_dict,
    mark_trainable,
    petl_modules,
    petl_wrappers,
    task_state_dict,
)

TINY = dict(img_size=16, patch_size=4, embed_dim=24, depth=4, num_heads=2)  # 4x4 patch grid


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("vit_tiny_patch16_224", TINY, num_classes=5).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _randomise(model, method):
    """Give every PETL parameter non-zero values (init makes them zero maps)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for mods in petl_modules(model).values():
            for m in mods:
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _strip(model):
    """Replace every Parallel wrapper by the module it wraps (the backbone without PETL)."""
    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Parallel):
                setattr(module, child_name, child.base)
    return model


@pytest.mark.parametrize("method,options", [
    ("adapter", {}),
    ("adapter", {"scale": 4.0, "bottleneck": 3}),
    ("convpass", {}),
    ("convpass", {"xavier_init": True, "scale": 10.0}),
    ("lora", {}),
    ("lora", {"targets": ["qkv", "proj", "fc1", "fc2"], "rank": 2, "alpha": 16}),
])
@pytest.mark.parametrize("train_mode", [False, True])
def test_petl_model_equals_backbone_at_init(backbone, images, method, options, train_mode):
    model = inject_petl(copy.deepcopy(backbone), method, **options)
    model.train(train_mode)  # dropout inside adapters must not matter either: the up projection is zero
    assert torch.equal(model(images), backbone(images))
    assert not torch.equal(_randomise(model, method)(images), backbone(images))


@pytest.mark.parametrize("mode", ["", "jax", "moco"])
@pytest.mark.parametrize("method", ["adapter", "convpass", "lora"])
def test_timm_init_keeps_zero_start(backbone, images, method, mode):
    model = _randomise(inject_petl(copy.deepcopy(backbone), method), method)
    model.init_weights(mode=mode)  # timm re-initialises every nn.Linear / Conv2d it finds
    for mods in petl_modules(model).values():
        for m in mods:
            if isinstance(m, LowRank):
                assert torch.count_nonzero(m.B) == 0 and torch.count_nonzero(m.A) > 0
            else:
                assert torch.count_nonzero(m.up.weight) == 0 and torch.count_nonzero(m.up.bias) == 0
            if isinstance(m, ConvBypass):
                centre = torch.zeros_like(m.conv.weight)
                centre[:, :, 1, 1] = torch.eye(m.conv.out_channels)
                assert torch.equal(m.conv.weight, centre)
    # the zero start: removing the adapters changes nothing
    plain = _strip(copy.deepcopy(model))
    model.eval()
    plain.eval()
    assert torch.equal(model(images), plain(images))


def test_adapter_is_adaptformer_parallel(backbone, images):
    model = _randomise(inject_petl(copy.deepcopy(backbone), "adapter", scale=0.7, dropout=0.0), "adapter").eval()
    blk = model.blocks[1]
    ad = blk.mlp.adapter
    x = torch.randn(2, 17, 24)
    h = x + blk.attn(blk.norm1(x))
    ln = blk.norm2(h)
    expected = h + blk.mlp.base(ln) + 0.7 * F.linear(F.relu(F.linear(ln, ad.down.weight, ad.down.bias)),
                                                        ad.up.weight, ad.up.bias)
    torch.testing.assert_close(blk(x), expected)


def test_convpass_matches_explicit_neighbourhood_sum():
    torch.manual_seed(3)
    H, W, d, b = 3, 4, 10, 5
    byp = ConvBypass(d, (H, W), num_prefix_tokens=1, bottleneck=b, scale=2.5, dropout=0.0, xavier_init=True)
    with torch.no_grad():
        for p in byp.parameters():
            p.copy_(torch.randn(p.shape))
    x = torch.randn(2, 1 + H * W, d)
    z = x @ byp.down.weight.T + byp.down.bias
    z = z * torch.sigmoid(1.702 * z)  # QuickGELU
    Wc, bc = byp.conv.weight, byp.conv.bias  # (b, b, 3, 3)
    out = torch.empty_like(z)
    out[:, 0] = z[:, 0] @ Wc[:, :, 1, 1].T + bc  # CLS: a 1x1 image sees only the centre tap
    for r in range(H):
        for c in range(W):
            acc = bc.expand(2, b).clone()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < H and 0 <= cc < W:  # zero padding
                        acc = acc + z[:, 1 + rr * W + cc] @ Wc[:, :, dr + 1, dc + 1].T
            out[:, 1 + r * W + c] = acc
    out = out * torch.sigmoid(1.702 * out)
    expected = 2.5 * (out @ byp.up.weight.T + byp.up.bias)
    torch.testing.assert_close(byp(x), expected)
    with pytest.raises(ValueError, match="tokens"):
        byp(torch.randn(2, 5, d))


def test_convpass_bypasses_both_branches(backbone, images):
    model = _randomise(inject_petl(copy.deepcopy(backbone), "convpass", scale=0.5, dropout=0.0), "convpass").eval()
    blk = model.blocks[0]
    x = torch.randn(2, 17, 24)
    h = x + blk.attn.base(blk.norm1(x)) + blk.attn.adapter(blk.norm1(x))
    expected = h + blk.mlp.base(blk.norm2(h)) + blk.mlp.adapter(blk.norm2(h))
    torch.testing.assert_close(blk(x), expected)
    assert [type(m) for m in petl_modules(model)[0]] == [ConvBypass, ConvBypass]
    assert petl_modules(model)[0][0].grid_size == (4, 4)


def test_lora_is_low_rank_weight_update(backbone):
    model = _randomise(inject_petl(copy.deepcopy(backbone), "lora", rank=3, alpha=6.0), "lora")
    qkv = model.blocks[2].attn.qkv
    x = torch.randn(4, 24)
    weight = qkv.base.weight + (6.0 / 3) * qkv.adapter.B @ qkv.adapter.A
    torch.testing.assert_close(qkv(x), x @ weight.T + qkv.base.bias)
    torch.testing.assert_close(qkv.adapter.delta_weight(), weight - qkv.base.weight)
    assert qkv.adapter.A.shape == (3, 24) and qkv.adapter.B.shape == (72, 3)


def test_mark_trainable_selects_task_weights(backbone):
    expect = {
        "adapter": lambda k: ".adapter." in k or k.startswith("head."),
        "convpass": lambda k: ".adapter." in k or k.startswith("head."),
        "lora": lambda k: ".adapter." in k or k.startswith("head."),
        "linear": lambda k: k.startswith("head."),
        "full": lambda k: True,
        "splora": lambda k: ".adapter." in k or k.startswith("head."),  # C, R, bias
        "splopa": lambda k: ".prototypes." in k or ".positions." in k or k.startswith("head."),  # u, v, B
    }
    for method in PETL_METHODS:
        model = mark_trainable(inject_petl(copy.deepcopy(backbone), method), method)
        for name, p in model.named_parameters():
            assert p.requires_grad == expect[method](name), (method, name)
        assert set(task_state_dict(model)) == {k for k, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="injected with 'adapter'"):
        mark_trainable(inject_petl(copy.deepcopy(backbone), "adapter"), "lora")


def test_petl_modules_per_block(backbone):
    counts = {"adapter": 1, "convpass": 2, "linear": 0, "full": 0}
    for method, n in counts.items():
        mods = petl_modules(inject_petl(copy.deepcopy(backbone), method))
        assert sorted(mods) == [0, 1, 2, 3] and all(len(v) == n for v in mods.values())
    mods = petl_modules(inject_petl(copy.deepcopy(backbone), "lora", targets=["qkv", "fc1"]))
    assert all(len(v) == 2 and all(isinstance(m, LowRank) for m in v) for v in mods.values())
    assert all(isinstance(m[0], Bottleneck) for m in petl_modules(inject_petl(copy.deepcopy(backbone), "adapter")).values())


def test_shared_adapter_is_stored_once_and_reloads(backbone, images):
    model = _randomise(inject_petl(copy.deepcopy(backbone), "adapter"), "adapter").eval()
    wrappers = petl_wrappers(model)
    wrappers[2][0].adapter = wrappers[1][0].adapter  # position 2 served by block 1's adapter
    mark_trainable(model, "adapter")
    sd = task_state_dict(model)
    assert not any(k.startswith("blocks.2.") for k in sd)
    assert "blocks.1.mlp.adapter.up.weight" in sd and "blocks.3.mlp.adapter.up.weight" in sd
    assert len(sd) == 3 * 4 + 2  # three distinct adapters (4 tensors each) + head

    fresh = inject_petl(copy.deepcopy(backbone), "adapter").eval()
    fw = petl_wrappers(fresh)
    fw[2][0].adapter = fw[1][0].adapter
    load_task_state_dict(fresh, sd, source="x.pt")
    assert fresh.blocks[2].mlp.adapter is fresh.blocks[1].mlp.adapter
    assert torch.equal(fresh(images), model(images))


def test_load_task_state_dict_is_strict(backbone):
    model = inject_petl(copy.deepcopy(backbone), "adapter")
    sd = task_state_dict(model)
    extra = {**sd, "blocks.0.mlp.base.fc1.weight": torch.zeros(96, 24)}
    with pytest.raises(TaskStateError, match=r"run7\.pt.*not consumed: blocks\.0\.mlp\.base\.fc1\.weight"):
        load_task_state_dict(model, extra, source="run7.pt")
    missing = {k: v for k, v in sd.items() if k != "head.bias"}
    with pytest.raises(TaskStateError, match="missing keys: head.bias"):
        load_task_state_dict(model, missing)
    bad = {**sd, "head.weight": torch.zeros(3, 24)}
    with pytest.raises(TaskStateError, match=r"'head.weight': stored \(3, 24\), model \(5, 24\)"):
        load_task_state_dict(model, bad)


def test_inject_errors(backbone):
    with pytest.raises(ValueError, match="unknown PETL method 'prompt'"):
        inject_petl(copy.deepcopy(backbone), "prompt")
    with pytest.raises(ValueError, match=r"'adapter': unknown option 'rank'"):
        inject_petl(copy.deepcopy(backbone), "adapter", rank=4)
    with pytest.raises(ValueError, match="targets"):
        inject_petl(copy.deepcopy(backbone), "lora", targets=["q"])
    model = inject_petl(copy.deepcopy(backbone), "adapter")
    with pytest.raises(ValueError, match="inject once"):
        inject_petl(model, "adapter")
    with pytest.raises(ValueError, match="inject_petl"):
        task_state_dict(copy.deepcopy(backbone))
