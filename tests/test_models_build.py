"""Backbone weights (cache, local files, timm overlay), build_model, task checkpoints."""

from __future__ import annotations

import pytest
import torch

from petlprune.methods import base as methods_base
from petlprune.models import backbone as bb
from petlprune.models.backbone import BackboneError, create_backbone, read_backbone, save_backbone
from petlprune.models.build import build_model, load_task_model, save_task_model
from petlprune.models.petl import TaskStateError, petl_modules, task_state_dict

ARCH = "vit_tiny_patch16_224"
TINY = dict(img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=2)


def _backbone_weights(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


@pytest.fixture()
def trained(tmp_path):
    """A 'pretrained' backbone file (random weights with a 7-class head, which must never be loaded)."""
    torch.manual_seed(0)
    source = create_backbone(ARCH, TINY, num_classes=7)
    path = tmp_path / "tiny.pt"
    save_backbone(path, source, timm_model=ARCH, timm_kwargs=TINY, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    return source, path


def test_cached_backbone_roundtrip_with_fresh_head(trained):
    source, path = trained
    meta = read_backbone(path)
    assert not any(k.startswith("head.") for k in meta["state_dict"])
    model = create_backbone(ARCH, TINY, num_classes=3, weights="file", checkpoint=path)
    own = _backbone_weights(model)
    assert own.keys() == _backbone_weights(source).keys()
    assert all(torch.equal(own[k], v) for k, v in _backbone_weights(source).items())
    assert model.head.weight.shape == (3, 24) and torch.count_nonzero(model.head.bias) == 0
    assert bb.data_config(model) == {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "image_size": 16}


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_plain_timm_state_dict_loads_without_head(tmp_path, trained, wrap):
    source, _ = trained
    sd = source.state_dict()  # includes a 7-class head
    path = tmp_path / "plain.pth"
    torch.save(sd if wrap is None else {wrap: sd, "epoch": 3}, path)
    model = create_backbone(ARCH, TINY, num_classes=2, weights="file", checkpoint=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in _backbone_weights(source).items())
    assert model.head.out_features == 2


def test_timm_pretrained_from_local_file_overlay(tmp_path, trained):
    source, _ = trained
    path = tmp_path / "timm_weights.pth"
    torch.save(source.state_dict(), path)
    model = create_backbone(ARCH, TINY, num_classes=4, weights="timm", checkpoint=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in _backbone_weights(source).items())
    assert model.head.out_features == 4


def test_timm_download_failure_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(bb.timm, "create_model", offline)
    monkeypatch.setattr(bb, "_require_hub", lambda name: None)  # the hub answers; the download itself fails
    with pytest.raises(BackboneError, match="could not load timm pretrained weights .*local file"):
        create_backbone("vit_base_patch16_224.orig_in21k", {}, num_classes=4, weights="timm")


def test_weight_errors_name_the_key(tmp_path, trained):
    source, cached = trained
    sd = source.state_dict()
    bad = dict(sd, **{"blocks.1.attn.qkv.weight": torch.zeros(10, 24)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match=r"bad\.pth: shape mismatch for key 'blocks\.1\.attn\.qkv\.weight'"):
        create_backbone(ARCH, TINY, num_classes=2, weights="file", checkpoint=tmp_path / "bad.pth")
    torch.save({k: v for k, v in sd.items() if k != "norm.bias"}, tmp_path / "short.pth")
    with pytest.raises(BackboneError, match="missing keys: norm.bias"):
        create_backbone(ARCH, TINY, num_classes=2, weights="file", checkpoint=tmp_path / "short.pth")
    with pytest.raises(BackboneError, match=r"key 'timm_kwargs' is .* but .* was asked for"):
        create_backbone(ARCH, dict(TINY, depth=2), num_classes=2, weights="file", checkpoint=cached)
    torch.save({"timm_model": ARCH, "state_dict": {}}, tmp_path / "partial.pt")
    with pytest.raises(BackboneError, match=r"partial\.pt: .*missing key\(s\) timm_kwargs, mean, std"):
        read_backbone(tmp_path / "partial.pt")
    with pytest.raises(BackboneError, match="key 'num_classes' is set by create_backbone"):
        create_backbone(ARCH, dict(TINY, num_classes=3), num_classes=2)


def test_build_model_from_spec_and_file(trained):
    _, path = trained
    m1 = build_model(None, petl="lora", petl_options={"rank": 2}, num_classes=6,
                     spec={"timm_model": ARCH, "timm_kwargs": TINY})
    assert m1.petl_method == "lora" and m1.petl_options["rank"] == 2 and m1.head.out_features == 6
    m2 = build_model(path, petl="adapter", petl_options=None, num_classes=6)
    assert {k for k, p in m2.named_parameters() if p.requires_grad} == set(task_state_dict(m2))
    with pytest.raises(ValueError, match="spec="):
        build_model(None, petl="adapter", num_classes=2)


def _train_a_little(model):
    with torch.no_grad():
        for mods in petl_modules(model).values():
            for m in mods:
                for p in m.parameters():
                    p.normal_(0, 0.2)
        model.head.weight.normal_()


def test_task_model_roundtrip(tmp_path, trained):
    _, path = trained
    model = build_model(path, petl="convpass", petl_options={"scale": 3.0}, num_classes=5)
    _train_a_little(model)
    out = tmp_path / "run" / "model.pt"
    save_task_model(out, model, backbone=path, petl="convpass", petl_options={"scale": 3.0}, num_classes=5)
    stored = torch.load(out, weights_only=True)
    assert stored["backbone"] == "tiny" and stored["plan"] is None
    assert set(stored["state_dict"]) == set(task_state_dict(model))  # no frozen weight is stored
    loaded, info = load_task_model(out, path)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert info["petl"] == "convpass" and info["mean"] == [0.1, 0.2, 0.3] and info["image_size"] == 16


class _KeepBlocks(methods_base.LayerPruningMethod):
    name = "test_keep"


def test_task_model_with_plan(tmp_path, trained, monkeypatch):
    monkeypatch.setitem(methods_base._REGISTRY, "test_keep", _KeepBlocks())
    _, path = trained
    model = build_model(path, petl="adapter", petl_options={}, num_classes=5)
    plan = methods_base.Plan("test_keep", "d2", 2, [0, 2])
    model = _KeepBlocks().apply(model, plan)
    _train_a_little(model)
    out = tmp_path / "model.pt"
    save_task_model(out, model, backbone=path, petl="adapter", petl_options={}, num_classes=5, plan=plan)
    loaded, info = load_task_model(out, path)
    assert len(loaded.blocks) == 2 and info["plan"]["kept_blocks"] == [0, 2]
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    assert torch.equal(loaded(x), model(x))


def test_task_model_refuses_other_backbone_and_extra_keys(tmp_path, trained):
    _, path = trained
    model = build_model(path, petl="adapter", petl_options={}, num_classes=5)
    out = tmp_path / "model.pt"
    save_task_model(out, model, backbone=path, petl="adapter", petl_options={}, num_classes=5)
    torch.manual_seed(99)
    other = tmp_path / "other.pt"
    save_backbone(other, create_backbone(ARCH, TINY, num_classes=1), timm_model=ARCH, timm_kwargs=TINY,
                  mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(ValueError, match=r"model\.pt: the backbone .*other\.pt is not the one"):
        load_task_model(out, other)
    ckpt = torch.load(out, weights_only=True)
    ckpt["state_dict"]["blocks.0.mlp.adapter.extra"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "tampered.pt")
    with pytest.raises(TaskStateError, match=r"tampered\.pt: .*not consumed: blocks\.0\.mlp\.adapter\.extra"):
        load_task_model(tmp_path / "tampered.pt", path)
    del ckpt["plan"]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old\.pt: not a task checkpoint: missing key\(s\) plan"):
        load_task_model(tmp_path / "old.pt", path)
