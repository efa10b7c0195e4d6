"""The bundled backbone: written reproducibly, verified before use, and a bad file stops the DAG at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from petlprune.models.assets import (
    AssetError,
    bundled_path,
    checksum_path,
    provenance_path,
    read_asset,
    sha256_of,
    verify_asset,
    write_asset,
)
from petlprune.models.backbone import backbone_state_dict, create_backbone, create_bundled, state_fingerprint

ROOT = Path(__file__).resolve().parents[1]
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
ARCH = "vit_tiny_patch16_224"


def _asset(out: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    state = backbone_state_dict(create_backbone(ARCH, TINY, num_classes=0))
    path = write_asset(out, state, timm_model=ARCH, timm_kwargs=TINY, mean=[0.5] * 3, std=[0.5] * 3,
                       provenance={"top1": 0.5, "command": "test"}, name="tiny")
    return path, state


def test_write_read_round_trip_and_same_weights_give_the_same_bytes(tmp_path: Path) -> None:
    path, state = _asset(tmp_path / "a")
    again, _ = _asset(tmp_path / "b")
    assert sha256_of(path) == sha256_of(again)  # nothing run-dependent in the file
    assert checksum_path(path).read_text() == f"{sha256_of(path)}  tiny.safetensors\n"
    record = json.loads(provenance_path(path).read_text())
    assert record["sha256"] == sha256_of(path) and record["top1"] == 0.5
    loaded = read_asset(path)
    assert (loaded["timm_model"], loaded["timm_kwargs"]) == (ARCH, TINY)
    assert state_fingerprint(loaded["state_dict"]) == state_fingerprint(state)


def test_create_bundled_loads_every_weight_and_a_fresh_head(tmp_path: Path) -> None:
    path, state = _asset(tmp_path)
    model = create_backbone(ARCH, TINY, num_classes=7, weights="bundled", checkpoint=path)
    assert model.head.out_features == 7
    assert state_fingerprint(backbone_state_dict(model)) == state_fingerprint(state)
    with pytest.raises(AssetError, match="embed_dim"):
        create_bundled(ARCH, {**TINY, "embed_dim": 64}, num_classes=7, path=path)


def test_corrupt_or_swapped_asset_is_refused_naming_the_file(tmp_path: Path) -> None:
    path, _ = _asset(tmp_path / "a")
    other, _ = _asset(tmp_path / "b", seed=1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AssetError, match=f"{path}: checksum mismatch"):
        read_asset(path)
    path.write_bytes(other.read_bytes())  # a valid safetensors file, but not the one the checksum names
    with pytest.raises(AssetError, match=f"{path}: checksum mismatch"):
        verify_asset(path)
    checksum_path(other).unlink()
    with pytest.raises(AssetError, match="sha256: bundled backbone file not found"):
        verify_asset(other)


def _bundled_smoke(tmp_path: Path, asset: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "workflow/config/smoke.yaml").read_text())
    cfg["backbone"].update(weights="bundled", checkpoint=str(asset))
    cfg["results"] = str(tmp_path / "results")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _snakemake(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", str(config),
         "--directory", str(ROOT), "-s", str(ROOT / "Snakefile"), *args],
        capture_output=True, text=True, timeout=300,
    )


def test_dag_verifies_the_asset_before_any_job(tmp_path: Path) -> None:
    asset, _ = _asset(tmp_path / "asset")
    config = _bundled_smoke(tmp_path, asset)
    dry = _snakemake(config, "-n", "-p")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "--weights bundled" in dry.stdout and f"--checkpoint {asset}" in dry.stdout

    data = bytearray(asset.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    asset.write_bytes(bytes(data))
    run = _snakemake(config, f"{tmp_path}/results/data/digits/meta.json")  # a real run, not a dry one
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"{asset}: checksum mismatch" in output, output[-2000:]
    assert not (tmp_path / "results").exists()  # stopped before any job ran


def test_shipped_asset_matches_its_checksum_and_provenance() -> None:
    asset = bundled_path()
    if not asset.is_file():
        pytest.skip("no bundled backbone shipped in this checkout")
    digest = verify_asset(asset)
    record = json.loads(provenance_path(asset).read_text())
    assert record["sha256"] == digest and record["file"] == asset.name
    assert asset.stat().st_size <= 6 * 2**20
    default = yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())["backbone"]
    loaded = read_asset(asset)
    assert (loaded["timm_model"], loaded["timm_kwargs"]) == (default["timm_model"], default["timm_kwargs"])
    assert record["config"]["backbone"]["timm_kwargs"] == default["timm_kwargs"]
    assert record["command"] and record["top1"] is not None and record["history"]


def test_bundle_stage_then_pretrain_bundled_gives_back_the_same_backbone(tmp_path: Path) -> None:
    from petlprune.cli import main
    from petlprune.models.backbone import read_backbone, save_backbone

    torch.manual_seed(0)
    model = create_backbone(ARCH, TINY, num_classes=5)
    pt = tmp_path / "vit.pt"
    save_backbone(pt, model, timm_model=ARCH, timm_kwargs=TINY, mean=[0.5] * 3, std=[0.5] * 3)
    history = [{"epoch": 1, "loss": 1.0, "train_top1": 0.3, "lr": 1e-3, "seconds": 1.0}]
    pt.with_suffix(".json").write_text(json.dumps({
        "weights": "pretrain", "timm_model": ARCH, "timm_kwargs": TINY, "top1": 0.25, "history": history,
        "num_classes": 5, "provenance": {"git_commit": "abc", "wall_seconds": 3.0, "argv": ["petlprune"]}}))
    assert main(["bundle", "--backbone", str(pt), "--out", str(tmp_path / "bundle"),
                 "--config", json.dumps({"backbone": {"name": "vit"}}), "--command", "make it"]) == 0
    asset = tmp_path / "bundle" / "vit.safetensors"
    record = json.loads(provenance_path(asset).read_text())
    assert record["sha256"] == verify_asset(asset) and record["command"] == "make it"
    assert record["top1"] == 0.25 and record["history"] == history and record["git_commit"] == "abc"

    out = tmp_path / "cache" / "vit.pt"
    assert main(["pretrain", "--out", str(out), "--timm-model", ARCH, "--timm-kwargs", json.dumps(TINY),
                 "--weights", "bundled", "--checkpoint", str(asset), "--seed", "0"]) == 0
    assert state_fingerprint(read_backbone(out)["state_dict"]) == state_fingerprint(backbone_state_dict(model))
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert metrics["weights"] == "bundled" and metrics["top1"] == 0.25 and metrics["sha256"] == record["sha256"]
    assert metrics["history"] == history


def test_package_data_ships_every_asset_file() -> None:
    """A normal (non-editable) install carries the assets: pyproject's package-data globs cover them."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["petlprune"]
    names = [f"assets/{n}" for n in ("embedded-vit.safetensors", "embedded-vit.safetensors.sha256",
                                     "embedded-vit.json", "README.md")]
    names += [f"assets/{p.name}" for p in bundled_path().parent.iterdir() if p.is_file()]
    assert all(any(fnmatch.fnmatch(n, g) for g in globs) for n in names), (names, globs)
