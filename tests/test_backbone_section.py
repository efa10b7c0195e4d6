"""The book's backbone section is drawn from the backbone's metrics file, bundled or pretrained."""

from __future__ import annotations

import json
from pathlib import Path

from petlprune.report.backbone_section import backbone_page


def test_backbone_page_shows_source_accuracy_curve_and_asset(tmp_path: Path) -> None:
    (tmp_path / "backbone").mkdir()
    history = [{"epoch": e, "loss": 4.0 - e, "train_top1": 0.1 * e, "lr": 1e-3, "seconds": 1.0} for e in (1, 2, 3)]
    metrics = {"backbone": "vit", "weights": "bundled", "timm_model": "vit_tiny_patch16_224", "timm_kwargs": {},
               "params": 1234, "source": "assets/vit.safetensors", "sha256": "ab" * 32, "top1": 0.4321,
               "num_classes": 128, "n_train": 51200, "history": history,
               "asset_provenance": {"git_commit": "c0ffee", "wall_seconds": 12.0, "command": "snakemake bundle"}}
    (tmp_path / "backbone" / "vit.json").write_text(json.dumps(metrics))
    out = tmp_path / "out"
    out.mkdir()
    page = backbone_page(tmp_path, out)
    assert "43.2%" in page and "ab" * 32 in page and "`snakemake bundle`" in page and "51,200" in page
    assert "backbone_curve.png" in page and (out / "backbone_curve.png").stat().st_size > 1000


def test_backbone_page_without_metrics_says_so(tmp_path: Path) -> None:
    assert "No backbone metrics" in backbone_page(tmp_path, tmp_path)
