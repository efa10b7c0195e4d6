"""``petlprune bundle``: turn a pretrained backbone into the asset shipped with the package.

Reads a backbone written by ``petlprune pretrain`` (``NAME.pt`` and its ``NAME.json``) and writes
``NAME.safetensors``, its ``.sha256`` and a provenance ``NAME.json`` (config, commit, wall time,
source top-1, pretraining curve, the command that regenerates it) to ``--out``; copying those three
files to ``src/petlprune/assets/`` ships them (book/data.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from petlprune.stages._args import json_object

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", type=Path, required=True, help="pretrained backbone (results/.../NAME.pt)")
    parser.add_argument("--out", type=Path, required=True, help="folder receiving the three asset files")
    parser.add_argument("--config", type=json_object, default={},
                        help="the config sections that made it (backbone, data.source) as a JSON object")
    parser.add_argument("--command", default="", help="the command that regenerates the asset")


def run(args: argparse.Namespace) -> None:
    from petlprune.models.assets import write_asset
    from petlprune.models.backbone import read_backbone

    ckpt = read_backbone(args.backbone)
    metrics_path = args.backbone.with_suffix(".json")
    if not metrics_path.is_file():
        raise SystemExit(f"petlprune bundle: {metrics_path}: the backbone's metrics file is missing")
    metrics = json.loads(metrics_path.read_text())
    if metrics.get("weights") != "pretrain":
        raise SystemExit(f"petlprune bundle: {metrics_path}: weights={metrics.get('weights')!r}; only a "
                         "backbone pretrained here (weights: pretrain) is bundled")
    prov = metrics.get("provenance", {})
    record = {
        "config": args.config,
        "command": args.command,
        "pretrain_argv": prov.get("argv"),
        "git_commit": prov.get("git_commit"),
        "git_dirty": prov.get("git_dirty"),
        "wall_seconds": prov.get("wall_seconds"),
        "threads": prov.get("threads"),
        "device": prov.get("device"),
        "platform": prov.get("platform"),
        "versions": prov.get("versions"),
        **{k: metrics.get(k) for k in ("timm_model", "timm_kwargs", "params", "source_name", "num_classes",
                                       "n_train", "n_test", "top1", "test_loss", "train", "history")},
    }
    asset = write_asset(args.out, ckpt["state_dict"], timm_model=ckpt["timm_model"],
                        timm_kwargs=ckpt["timm_kwargs"], mean=ckpt["mean"], std=ckpt["std"],
                        provenance=record, name=args.backbone.stem)
    print(f"bundle: {asset} ({asset.stat().st_size / 2**20:.2f} MiB), source top-1 {metrics.get('top1')}",
          flush=True)
