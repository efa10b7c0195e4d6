"""keep_blocks: the pruned model is the kept blocks + the original final norm + the trained head."""

from __future__ import annotations

import copy

import pytest
import torch

from petlprune.models.backbone import create_backbone
from petlprune.models.petl import inject_petl, petl_modules, task_state_dict
from petlprune.models.surgery import (
    adapter_positions,
    drop_adapters,
    keep_blocks,
    original_block_indices,
    share_adapters,
)

TINY = dict(img_size=16, patch_size=4, embed_dim=24, depth=5, num_heads=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = inject_petl(create_backbone("vit_tiny_patch16_224", TINY, num_classes=4), "adapter").eval()
    with torch.no_grad():  # non-zero adapters and a non-trivial final norm, so every part matters
        for mods in petl_modules(m).values():
            for p in mods[0].parameters():
                p.normal_(0, 0.3)
        m.norm.weight.normal_(1, 0.2)
        m.norm.bias.normal_(0, 0.2)
    return m


def _by_hand(blocks, m, x):
    tokens = m.patch_embed(x)  # (B, 16, C)
    tokens = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + m.pos_embed  # (B, 17, C)
    for blk in blocks:
        tokens = blk(tokens)
    cls = torch.nn.functional.layer_norm(tokens, (m.embed_dim,), m.norm.weight, m.norm.bias, m.norm.eps)[:, 0]
    return cls @ m.head.weight.T + m.head.bias


def test_pruned_model_is_composition_of_kept_blocks(model):
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    original = copy.deepcopy(model)
    torch.testing.assert_close(original(x), _by_hand(list(original.blocks), original, x))

    pruned = keep_blocks(copy.deepcopy(model), [0, 2, 3])
    expected = _by_hand([original.blocks[i] for i in (0, 2, 3)], original, x)
    torch.testing.assert_close(pruned(x), expected)
    assert not torch.allclose(pruned(x), original(x))
    assert len(pruned.blocks) == 3 and isinstance(pruned.blocks, torch.nn.Sequential)
    assert torch.equal(pruned.head.weight, original.head.weight)
    assert original_block_indices(pruned) == [0, 2, 3]
    # the kept blocks bring their adapters; task weights renumber with the blocks
    assert {k.split(".")[1] for k in task_state_dict(pruned) if k.startswith("blocks.")} == {"0", "1", "2"}


def test_timm_feature_api_follows_new_depth(model):
    x = torch.randn(2, 3, 16, 16)
    pruned = keep_blocks(copy.deepcopy(model), [1, 4])
    final, inter = pruned.forward_intermediates(x, output_fmt="NLC")
    assert len(inter) == 2 and inter[0].shape == (2, 16, 24)
    torch.testing.assert_close(final, pruned.forward_features(x))
    only_last = pruned.forward_intermediates(x, indices=1, intermediates_only=True, output_fmt="NLC")
    torch.testing.assert_close(only_last[0], inter[1])
    assert [f["module"] for f in pruned.feature_info] == ["blocks.0", "blocks.1"]
    assert pruned._model_args["depth"] == 2


def test_pruning_twice_composes_indices(model):
    pruned = keep_blocks(keep_blocks(copy.deepcopy(model), [0, 2, 3, 4]), [0, 2])
    assert original_block_indices(pruned) == [0, 3]
    assert pruned.blocks[1] is not None and len(pruned.blocks) == 2


@pytest.mark.parametrize("indices,match", [
    ([], "at least one"),
    ([0, 5], r"\[5\] out of range"),
    ([2, 1], "ascending"),
    ([1, 1], "ascending"),
])
def test_keep_blocks_rejects_bad_indices(model, indices, match):
    with pytest.raises(ValueError, match=match):
        keep_blocks(copy.deepcopy(model), indices)


def _convpass(depth=3):
    torch.manual_seed(4)
    m = inject_petl(create_backbone("vit_tiny_patch16_224", dict(TINY, depth=depth), num_classes=4), "convpass",
                    dropout=0.0).eval()
    with torch.no_grad():
        for mods in petl_modules(m).values():
            for mod in mods:
                for p in mod.parameters():
                    p.normal_(0, 0.3)
    return m


def test_adapter_positions_are_forward_ordered():
    m = _convpass()
    pos = adapter_positions(m)
    assert len(pos) == 6
    assert pos[0] is m.blocks[0].attn and pos[1] is m.blocks[0].mlp and pos[5] is m.blocks[2].mlp


def test_shared_adapter_equals_copied_weights_and_sums_gradients():
    m = _convpass()
    x = torch.randn(2, 3, 16, 16)
    untied = copy.deepcopy(m)
    untied.blocks[2].attn.adapter.load_state_dict(untied.blocks[0].mlp.adapter.state_dict())
    shared = share_adapters(copy.deepcopy(m), {"4": 1})
    assert shared.blocks[2].attn.adapter is shared.blocks[0].mlp.adapter
    torch.testing.assert_close(shared(x), untied(x))
    assert len(task_state_dict(shared)) == len(task_state_dict(m)) - 6  # one ConvBypass = 6 tensors
    shared(x).sum().backward()
    untied(x).sum().backward()
    g_shared = shared.blocks[0].mlp.adapter.up.weight.grad
    g_sum = untied.blocks[0].mlp.adapter.up.weight.grad + untied.blocks[2].attn.adapter.up.weight.grad
    torch.testing.assert_close(g_shared, g_sum)


def test_dropped_adapter_runs_backbone_module_only():
    m = _convpass()
    x = torch.randn(2, 3, 16, 16)
    zeroed = copy.deepcopy(m)
    with torch.no_grad():
        zeroed.blocks[1].mlp.adapter.up.weight.zero_()
        zeroed.blocks[1].mlp.adapter.up.bias.zero_()
    dropped = drop_adapters(copy.deepcopy(m), [3])
    assert dropped.blocks[1].mlp.adapter is None
    torch.testing.assert_close(dropped(x), zeroed(x))
    assert not any(k.startswith("blocks.1.mlp.adapter") for k in task_state_dict(dropped))


@pytest.mark.parametrize("sharing,match", [
    ({0: 0}, "cannot serve itself"),
    ({0: 1, 1: 2}, "itself shared"),
    ({0: 9}, "out of range"),
    ({"a": 1}, "not an integer"),
])
def test_share_adapters_rejects_bad_maps(sharing, match):
    with pytest.raises(ValueError, match=match):
        share_adapters(_convpass(), sharing)
    with pytest.raises(ValueError, match="no adapter to share"):
        share_adapters(drop_adapters(_convpass(), [2]), {0: 2})
