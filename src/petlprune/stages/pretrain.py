"""``petlprune pretrain``: make the backbone every task shares, and cache it.

``--weights pretrain`` trains the whole ViT from scratch on the generated fractal source (its
``train.txt``; top-1 on its ``test.txt`` is reported), ``random`` keeps timm's initialisation (the
random-backbone control), ``timm`` takes timm's pretrained weights for a tag (``--checkpoint`` for a
local copy), ``file`` a local checkpoint, ``bundled`` the backbone shipped in ``petlprune/assets``
(``--checkpoint`` for another asset file; its checksum is verified first). The result is written as ``{"timm_model", "timm_kwargs",
"state_dict" (no head), "mean", "std"}`` plus ``NAME.json`` with metrics and provenance.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from petlprune.stages._args import json_object, positive_int
from petlprune.stages._data import num_classes_of

__all__ = ["add_arguments", "run", "pretrain"]

WEIGHTS = ("pretrain", "random", "timm", "file", "bundled")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="backbone file to write (results/backbone/NAME.pt)")
    parser.add_argument("--timm-model", required=True, help="timm model name (or pretrained tag for --weights timm)")
    parser.add_argument("--timm-kwargs", type=json_object, default={},
                        help="timm.create_model keyword arguments as a JSON object")
    parser.add_argument("--weights", choices=WEIGHTS, required=True, help="where the weights come from")
    parser.add_argument("--checkpoint", type=Path, default=None, help="local weights for --weights file / timm")
    parser.add_argument("--data", type=Path, default=None,
                        help="source data folder with train.txt / test.txt (--weights pretrain)")
    parser.add_argument("--train", type=json_object, default={}, help="TrainConfig as a JSON object (--weights pretrain)")
    parser.add_argument("--seed", type=int, required=True, help="seed of initialisation and data order")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def pretrain(
    data: Path,
    timm_model: str,
    timm_kwargs: dict[str, Any],
    train: dict[str, Any],
    *,
    seed: int,
    threads: int,
    device: str = "auto",
) -> tuple[Any, dict[str, Any]]:
    """Train a randomly initialised backbone (all weights) on the source data.

    Returns:
        (model with its pretraining head, metrics without provenance).
    """
    from petlprune.data.vtab import VTABDataset, load_meta, make_loader
    from petlprune.models.backbone import create_backbone, data_config
    from petlprune.train import TrainConfig, evaluate, fit, select_device, set_determinism

    cfg = TrainConfig.from_dict(train, source="--train")
    meta = load_meta(data)
    set_determinism(seed, threads)
    dev = select_device(device)
    num_classes = num_classes_of(data, ("train", "test"))
    model = create_backbone(timm_model, timm_kwargs, num_classes=num_classes)
    dc = data_config(model)
    kw = dict(image_size=dc["image_size"], mean=dc["mean"], std=dc["std"], num_classes=num_classes, cache=True)
    train_ds, test_ds = VTABDataset(data, "train", **kw), VTABDataset(data, "test", **kw)
    print(f"pretrain {timm_model} {timm_kwargs} on {data} (train: {len(train_ds)}, test: {len(test_ds)}, "
          f"{train_ds.num_classes} classes), {sum(p.numel() for p in model.parameters()):,} params, device {dev}",
          flush=True)
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=seed, drop_last=len(train_ds) > cfg.batch_size)
    history = fit(model, loader, cfg, device=dev, seed=seed, log=lambda s: print(s, flush=True))
    result = evaluate(model, make_loader(test_ds, 256, shuffle=False, seed=seed), dev)
    print(f"source test top1 {result['top1']:.4f} (n={result['n']})", flush=True)
    metrics = {
        "source": str(data),
        "source_name": meta.get("name"),
        "num_classes": train_ds.num_classes,
        "n_train": len(train_ds),
        "top1": result["top1"],
        "test_loss": result["loss"],
        "n_test": result["n"],
        "train": cfg.to_dict(),
        "history": history,
    }
    return model.cpu(), metrics


def _bundled_metrics(checkpoint: Path | None) -> dict[str, Any]:
    """What the bundled asset's provenance JSON says about its pretraining (source, top-1, curve)."""
    import json

    from petlprune.models.assets import bundled_path, provenance_path, sha256_of

    asset = bundled_path(checkpoint)
    record = json.loads(provenance_path(asset).read_text()) if provenance_path(asset).is_file() else {}
    return {"source": str(asset), "sha256": sha256_of(asset), "top1": record.get("top1"),
            "source_name": record.get("source_name"), "num_classes": record.get("num_classes"),
            "n_train": record.get("n_train"), "history": record.get("history"),
            "asset_provenance": {k: record.get(k) for k in ("git_commit", "wall_seconds", "command")}}


def run(args: argparse.Namespace) -> None:
    from petlprune.io import atomic_write_json, provenance
    from petlprune.models.backbone import BackboneError, create_backbone, data_config, save_backbone
    from petlprune.train import peak_memory_mb, select_device, set_determinism

    t0 = time.perf_counter()
    if args.weights == "pretrain":
        if args.data is None:
            raise SystemExit("petlprune pretrain: --weights pretrain needs --data SOURCE_DIR")
        model, metrics = pretrain(args.data, args.timm_model, args.timm_kwargs, args.train,
                                  seed=args.seed, threads=args.threads, device=args.device)
    else:
        if args.weights == "file" and args.checkpoint is None:
            raise SystemExit("petlprune pretrain: --weights file needs --checkpoint PATH")
        set_determinism(args.seed, args.threads)
        try:
            model = create_backbone(args.timm_model, args.timm_kwargs, num_classes=0, weights=args.weights,
                                    checkpoint=args.checkpoint)
        except BackboneError as err:  # offline hub, wrong file: the message says what to do
            raise SystemExit(f"petlprune pretrain: {err}") from None
        metrics = {"source": None if args.checkpoint is None else str(args.checkpoint), "top1": None}
        if args.weights == "bundled":
            metrics = _bundled_metrics(args.checkpoint)
    dc = data_config(model)
    save_backbone(args.out, model, timm_model=args.timm_model, timm_kwargs=args.timm_kwargs,
                  mean=dc["mean"], std=dc["std"])
    dev = select_device(args.device)
    metrics = {
        "backbone": args.out.stem,
        "weights": args.weights,
        "timm_model": args.timm_model,
        "timm_kwargs": args.timm_kwargs,
        "mean": dc["mean"],
        "std": dc["std"],
        "params": sum(p.numel() for k, p in model.named_parameters() if not k.startswith("head.")),
        **metrics,
        "provenance": provenance(
            device=str(dev), seed=args.seed, wall_seconds=time.perf_counter() - t0,
            peak_memory_mb=peak_memory_mb(dev), threads=args.threads, argv=getattr(args, "argv", None),
        ),
    }
    atomic_write_json(args.out.with_suffix(".json"), metrics)
