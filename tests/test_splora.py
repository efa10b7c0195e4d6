"""SPLoRA layers: identity at init, masks in the forward pass (no regrowth), slicing, stored parameters."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from petlprune.measure import stored_params
from petlprune.models.backbone import create_backbone
from petlprune.models.petl import inject_petl, mark_trainable, task_state_dict
from petlprune.models.splora import SPLoRA, SPLoRALinear, channel_groups, get_masks, set_masks, splora_layers
from petlprune.models.surgery import slice_channels

TINY = dict(img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=3)  # head_dim 8, MLP hidden 96


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("vit_tiny_patch16_224", TINY, num_classes=5).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _splora(backbone, rank=2):
    model = inject_petl(copy.deepcopy(backbone), "splora", rank=rank)
    mark_trainable(model)
    return model.eval()


def _randomise(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in splora_layers(model).values():
            for p in layer.adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _masks(model, seed=4):
    """Random unit masks keeping at least one unit per group."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, grp in channel_groups(model).items():
        m = (torch.rand(grp["units"], generator=g) < 0.5).float()
        m[0] = 1.0
        masks[name] = m.tolist()
    return masks


def test_init_equals_backbone_up_to_C(backbone, images):
    model = _splora(backbone)
    layers = splora_layers(model)
    assert len(layers) == 4 * TINY["depth"]
    for layer in layers.values():
        assert layer.adapter.C.abs().max() <= 1e-4 and layer.adapter.C.abs().max() > 0
    with torch.no_grad():
        ref = backbone(images)
        assert torch.allclose(model(images), ref, atol=1e-3)
        for layer in layers.values():
            layer.adapter.C.zero_()
        assert torch.equal(model(images), ref)


def test_trainable_and_task_weights(backbone):
    model = _splora(backbone)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks.0.mlp.fc1.adapter.C" in trainable and "blocks.0.mlp.fc1.adapter.bias" in trainable
    assert "blocks.0.mlp.fc1.base.weight" not in trainable and "blocks.0.norm1.weight" not in trainable
    assert set(task_state_dict(model)) == trainable


def test_layer_is_masked_fused_weight():
    torch.manual_seed(0)
    base = torch.nn.Linear(5, 4)
    w, b = base.weight.detach().clone(), base.bias.detach().clone()
    layer = SPLoRALinear(base, rank=2)
    with torch.no_grad():
        layer.adapter.C.normal_()
        layer.mask_out.copy_(torch.tensor([1.0, 0, 1, 1]))
        layer.mask_in.copy_(torch.tensor([1.0, 1, 0, 1, 1]))
    x = torch.randn(3, 5)
    m_out, m_in = layer.mask_out, layer.mask_in
    expected = x @ (m_out[:, None] * (w + layer.adapter.C @ layer.adapter.R) * m_in[None]).T + m_out * b
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_masked_channels_contribute_nothing_and_do_not_regrow(backbone, images):
    model = _randomise(_splora(backbone))
    masks = _masks(model)
    set_masks(model, masks)
    fc1 = model.blocks[0].mlp.fc1
    pruned = [i for i, v in enumerate(masks["blocks.0.mlp"]) if v == 0]
    assert pruned
    # Perturbing a pruned channel's weights anywhere (W, C, R, bias, consumer column) changes nothing.
    with torch.no_grad():
        ref = model(images)
        fc1.base.weight[pruned] += 5.0
        fc1.adapter.C[pruned] += 5.0
        fc1.adapter.bias[pruned] += 5.0
        model.blocks[0].mlp.fc2.base.weight[:, pruned] += 5.0
        head = [i for i, v in enumerate(masks["blocks.1.attn"]) if v == 0]
        if head:
            model.blocks[1].attn.qkv.adapter.bias[8 * head[0]: 8 * head[0] + 8] += 5.0
        assert torch.allclose(model(images), ref, atol=1e-5)
    # Optimiser steps with weight decay: the effective weights of pruned channels stay exactly zero.
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(images), torch.tensor([0, 1, 2, 3])).backward()
        assert fc1.adapter.R.grad is not None and fc1.adapter.C.grad[pruned].abs().max() == 0
        opt.step()
    with torch.no_grad():
        assert fc1.weight()[pruned].abs().max() == 0 and fc1.effective_bias()[pruned].abs().max() == 0
        assert model.blocks[0].mlp.fc2.weight()[:, pruned].abs().max() == 0
    assert get_masks(model)["blocks.0.mlp"].tolist() == masks["blocks.0.mlp"]


def test_sliced_model_equals_masked_model(backbone, images):
    model = _randomise(_splora(backbone))
    masks = _masks(model, seed=5)
    set_masks(model, masks)
    with torch.no_grad():
        ref = model(images)
    sliced = slice_channels(copy.deepcopy(model))
    assert not splora_layers(sliced)
    for i, block in enumerate(sliced.blocks):
        assert block.mlp.fc1.out_features == sum(masks[f"blocks.{i}.mlp"])
        assert block.attn.num_heads == sum(masks[f"blocks.{i}.attn"])
        assert block.attn.qkv.out_features == 3 * 8 * block.attn.num_heads
    assert sum(p.numel() for p in sliced.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(sliced(images), ref, atol=1e-5)


def test_stored_params_formula(backbone):
    model = _splora(backbone, rank=2)
    masks = {name: [1.0] * g["units"] for name, g in channel_groups(model).items()}
    masks["blocks.0.mlp"] = [1.0] * 10 + [0.0] * 86  # 10 of 96 hidden channels kept
    masks["blocks.0.attn"] = [1.0, 0.0, 0.0]  # 1 of 3 heads
    set_masks(model, masks)
    r, d = 2, TINY["embed_dim"]
    per_layer = {  # r (|m_out| + |m_in|) + |m_out|
        "fc1": r * (10 + d) + 10, "fc2": r * (d + 10) + d,
        "qkv": r * (3 * 8 + d) + 3 * 8, "proj": r * (d + 8) + d,
    }
    full = {"fc1": r * (96 + d) + 96, "fc2": r * (d + 96) + d, "qkv": r * (3 * d + d) + 3 * d, "proj": r * (2 * d) + d}
    expected_petl = sum(per_layer.values()) + (TINY["depth"] - 1) * sum(full.values())
    stored = stored_params(None, model)
    assert stored["petl"] == expected_petl
    assert stored["head"] == 5 * d + 5 and stored["backbone"] == 0


def test_fuse_keeps_output_and_makes_w_a_task_weight(backbone, images):
    model = _randomise(_splora(backbone))
    with torch.no_grad():
        ref = model(images)
    for layer in splora_layers(model).values():
        layer.fuse_()
        layer.train_base = True
    mark_trainable(model)
    with torch.no_grad():
        assert torch.allclose(model(images), ref, atol=1e-5)
    task = task_state_dict(model)
    assert "blocks.0.mlp.fc1.base.weight" in task and task["blocks.0.mlp.fc1.adapter.C"].numel() == 0
    assert model.blocks[0].mlp.fc1.base.weight.requires_grad
    assert isinstance(model.blocks[0].mlp.fc1.adapter, SPLoRA)


@pytest.mark.parametrize(("init", "fan_in"), [("library", lambda r, n: r * n), ("linear", lambda r, n: n)])
def test_init_range_of_R(init, fan_in):
    """``init: library`` draws R from U(+-1/sqrt(r in)), as the SPA library's (1, r, in) tensor does;
    ``linear`` from U(+-1/sqrt(in)). Over 64 x 384 draws the largest |R| lies within 1% of the bound."""
    r, n = 64, 384
    torch.manual_seed(0)
    layer = SPLoRA(n, 8, r, init=init)
    bound = 1.0 / (fan_in(r, n) ** 0.5)
    top = layer.R.detach().abs().max().item()
    assert top <= bound
    assert top >= 0.99 * bound
    # uniform on [-b, b]: the variance is b^2 / 3
    assert layer.R.detach().double().var().item() == pytest.approx(bound**2 / 3, rel=0.03)
    assert layer.C.detach().abs().max().item() <= 1e-4  # C's range is the library's init_range either way


def test_init_option_flows_from_inject_petl(backbone):
    """The PETL option reaches every layer; library is the default and is sqrt(r) times narrower."""
    rank = 4
    default = inject_petl(copy.deepcopy(backbone), "splora", rank=rank)
    linear = inject_petl(copy.deepcopy(backbone), "splora", rank=rank, init="linear")
    assert default.petl_options["init"] == "library"
    for name, layer in splora_layers(default).items():
        n = layer.in_features
        assert layer.adapter.init == "library"
        assert layer.adapter.R.abs().max().item() <= 1 / (rank * n) ** 0.5
        wide = splora_layers(linear)[name].adapter
        assert wide.init == "linear" and wide.R.abs().max().item() <= 1 / n**0.5
        # at least 4 x 24 draws: the widest draw of `linear` exceeds library's bound (P(miss) = 2^-96)
        assert wide.R.abs().max().item() > 1 / (rank * n) ** 0.5
    with pytest.raises(ValueError, match="init"):
        inject_petl(copy.deepcopy(backbone), "splora", rank=rank, init="kaiming")
