"""Backbone weights as users have them: a timm tag with no network, a hub ``model.safetensors``, Google's
original ``ViT-B_16.npz``. The files are written here from a small timm model (the npz in Google's key
layout, the inverse of ``timm.models.vision_transformer._load_weights``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from petlprune.models.backbone import BackboneError, create_backbone, read_backbone

ROOT = Path(__file__).resolve().parents[1]
ARCH = "vit_tiny_patch16_224"
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 2, "num_heads": 3}
TAG = "vit_base_patch16_224.orig_in21k"  # paper.yaml's backbone


def _reference():
    torch.manual_seed(3)
    return create_backbone(ARCH, TINY, num_classes=5, weights="random")


def _google_npz(model, path: Path) -> Path:
    """Google's ViT checkpoint layout (google-research/vision_transformer), with a 21k-class head and the
    in21k pre-logits layer that timm's current ViT does not use."""
    def a(t):
        return t.detach().numpy().astype(np.float32)

    d = model.embed_dim
    H = model.blocks[0].attn.num_heads
    w = {"embedding/kernel": a(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),  # (kh, kw, in, out)
         "embedding/bias": a(model.patch_embed.proj.bias),
         "cls": a(model.cls_token),
         "Transformer/posembed_input/pos_embedding": a(model.pos_embed),
         "Transformer/encoder_norm/scale": a(model.norm.weight),
         "Transformer/encoder_norm/bias": a(model.norm.bias),
         "head/kernel": np.zeros((d, 21843), np.float32), "head/bias": np.zeros(21843, np.float32),
         "pre_logits/kernel": np.eye(d, dtype=np.float32), "pre_logits/bias": np.zeros(d, np.float32)}
    for i, blk in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = a(blk.norm1.weight), a(blk.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = a(blk.norm2.weight), a(blk.norm2.bias)
        qkv_w, qkv_b = blk.attn.qkv.weight.chunk(3), blk.attn.qkv.bias.chunk(3)
        for n, wt, b in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True):
            w[mha + f"{n}/kernel"] = a(wt.T.reshape(d, H, -1))  # (D, heads, head_dim)
            w[mha + f"{n}/bias"] = a(b.reshape(H, -1))
        w[mha + "out/kernel"] = a(blk.attn.proj.weight.T.reshape(H, -1, d))  # (heads, head_dim, D)
        w[mha + "out/bias"] = a(blk.attn.proj.bias)
        for r in range(2):
            fc = getattr(blk.mlp, f"fc{r + 1}")
            w[p + f"MlpBlock_3/Dense_{r}/kernel"], w[p + f"MlpBlock_3/Dense_{r}/bias"] = a(fc.weight.T), a(fc.bias)
    np.savez(path, **w)
    return path


def _pretrain(out: Path, checkpoint: Path) -> None:
    """``petlprune pretrain --weights file`` (the CLI entry, in this process)."""
    from petlprune.cli import main

    assert main(["pretrain", "--out", str(out), "--timm-model", ARCH, "--timm-kwargs", json.dumps(TINY),
                 "--weights", "file", "--checkpoint", str(checkpoint), "--seed", "0"]) == 0


def _assert_same_backbone(path: Path, ref) -> None:
    state = read_backbone(path)["state_dict"]
    own = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}
    assert set(state) == set(own)
    for k, v in own.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=1e-6, msg=k)
    # and the loaded backbone computes what the reference does
    model = create_backbone(ARCH, TINY, num_classes=0, weights="file", checkpoint=path).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref.reset_classifier(0)
    torch.testing.assert_close(model(x), ref.eval()(x), rtol=1e-5, atol=1e-5)


def test_file_weights_from_a_hub_safetensors_through_the_cli(tmp_path):
    from safetensors.torch import save_file

    ref = _reference()
    ckpt = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(ckpt))  # timm's hub layout
    _pretrain(tmp_path / "bb.pt", ckpt)
    _assert_same_backbone(tmp_path / "bb.pt", ref)


def test_file_weights_from_googles_original_npz_through_the_cli(tmp_path):
    ref = _reference()
    ckpt = _google_npz(ref, tmp_path / "ViT-B_16.npz")
    _pretrain(tmp_path / "bb.pt", ckpt)
    _assert_same_backbone(tmp_path / "bb.pt", ref)


def test_a_npz_that_is_not_a_vit_names_the_file(tmp_path):
    bad = tmp_path / "ViT-B_16.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(BackboneError, match="ViT-B_16.npz"):
        create_backbone(ARCH, TINY, num_classes=0, weights="file", checkpoint=bad)
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(BackboneError, match="model.safetensors"):
        create_backbone(ARCH, TINY, num_classes=0, weights="file", checkpoint=broken)


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """The hub unreachable the way an offline node sees it (its name does not resolve), nothing cached."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.invalid")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return constants


def test_timm_weights_without_network_fail_in_seconds_saying_how_to_give_a_file(no_hub):
    t0 = time.perf_counter()
    with pytest.raises(BackboneError) as err:
        create_backbone(TAG, num_classes=0, weights="timm")
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"took {elapsed:.1f}s (the hub client's retries take ~48 s)"
    msg = str(err.value)
    assert TAG in msg and "huggingface.invalid" in msg
    assert "model.safetensors" in msg and "ViT-B_16.npz" in msg and "--checkpoint" in msg


def test_hf_hub_offline_fails_at_once(no_hub, monkeypatch):
    monkeypatch.setattr(no_hub, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(BackboneError, match="HF_HUB_OFFLINE"):
        create_backbone(TAG, num_classes=0, weights="timm")
    assert time.perf_counter() - t0 < 5


def test_timm_weights_offline_through_the_cli_exit_with_the_message(no_hub, tmp_path):
    from petlprune.cli import main

    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--out", str(tmp_path / "bb.pt"), "--timm-model", TAG, "--weights", "timm", "--seed", "0"])
    assert time.perf_counter() - t0 < 10
    msg = str(done.value.code)
    assert msg.startswith("petlprune pretrain: weights 'timm'") and "--checkpoint PATH" in msg
    assert not (tmp_path / "bb.pt").exists()
