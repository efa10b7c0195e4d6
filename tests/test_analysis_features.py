"""block_features: every block's CLS token in one pass equals running the blocks one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from petlprune.analysis.features import block_features, load_features, save_features
from petlprune.models.backbone import create_backbone
from petlprune.models.petl import inject_petl, petl_modules

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = inject_petl(create_backbone("vit_tiny_patch16_224", TINY, num_classes=5), "adapter")
    with torch.no_grad():  # non-zero adapters and a non-trivial final norm, so every part shows
        for mods in petl_modules(m).values():
            for p in mods[0].parameters():
                p.normal_(0, 0.3)
        m.norm.weight.normal_(1, 0.2)
    return m


def _batches(n=10, batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 5
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)], x, y


@torch.no_grad()
def _by_hand(m, x):
    tokens = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))  # (B, 1 + T, C)
    embed, cls = tokens[:, 0], []
    for blk in m.blocks:
        tokens = blk(tokens)
        cls.append(tokens[:, 0])
    return torch.stack(cls), embed, tokens  # (L, B, C), (B, C), last block's (B, 1 + T, C)


def test_one_pass_equals_block_by_block(model):
    loader, x, y = _batches()
    model.train()  # block_features must switch to eval (dropout/drop-path off) and restore the mode
    cls, embed, labels = block_features(model, loader)
    assert model.training
    model.eval()
    want_cls, want_embed, last = _by_hand(model, x)
    assert cls.shape == (4, 10, 32) and cls.dtype == np.float32 and embed.shape == (10, 32)
    np.testing.assert_allclose(cls, want_cls.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(embed, want_embed.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, y.numpy())
    # before the final norm: norm + head of the last block's tokens are the model's logits
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.norm(last)), model(x))
        assert not torch.allclose(torch.from_numpy(cls[-1]), model.norm(last)[:, 0])


def test_npz_round_trip_and_errors(model, tmp_path):
    loader, _, _ = _batches()
    cls, embed, labels = block_features(model, loader)
    save_features(tmp_path / "f.npz", cls, embed, labels, seconds=1.5)
    back = load_features(tmp_path / "f.npz")
    for key, value in {"cls": cls, "embed": embed, "labels": labels}.items():
        np.testing.assert_array_equal(back[key], value)
    assert back["seconds"] == 1.5
    np.savez(tmp_path / "bad.npz", cls=cls, labels=labels)
    with pytest.raises(ValueError, match=r"bad.npz: missing array\(s\) \['embed'\]"):
        load_features(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", cls=cls, embed=embed, labels=labels[:-1])
    with pytest.raises(ValueError, match="shape.npz: inconsistent shapes"):
        load_features(tmp_path / "shape.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_features(tmp_path / "nope.npz")


def test_no_class_token_is_refused():
    m = create_backbone("vit_tiny_patch16_224", {**TINY, "class_token": False, "global_pool": "avg"}, num_classes=5)
    with pytest.raises(ValueError, match="no class token"):
        block_features(m, _batches()[0])
