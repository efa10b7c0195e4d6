"""``petlprune finetune``: PETL fine-tuning of one task on a frozen backbone.

Protocol (VTAB-1k, as in the PETL papers but without selecting on test): train on train800val200 and
evaluate test once, after the LAST epoch. With ``--val``, train on train800 and evaluate val200 instead;
that mode is for choosing hyper-parameters. Writes ``model.pt`` (task weights only) and
``metrics.json``; a non-finite loss stops the run before anything is written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from petlprune.core.splits import splits_for
from petlprune.stages._args import json_object, positive_int
from petlprune.stages._data import num_classes_of

__all__ = ["add_arguments", "run", "splits_for", "num_classes_of", "finetune"]  # the last two re-exported



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="task folder in the VTAB-1k layout")
    parser.add_argument("--backbone", type=Path, required=True, help="cached backbone file (results/backbone/*.pt)")
    parser.add_argument("--petl", required=True, help="PETL method: adapter, convpass, lora, linear, full")
    parser.add_argument("--petl-options", type=json_object, default={}, help="PETL options as a JSON object")
    parser.add_argument("--train", type=json_object, required=True,
                        help="TrainConfig as a JSON object (epochs, lr, weight_decay, warmup_epochs, batch_size, ...)")
    parser.add_argument("--seed", type=int, required=True, help="seed of initialisation, data order and dropout")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, required=True, help="output folder (RUN_DIR/finetune)")
    parser.add_argument("--val", action="store_true",
                        help="train on train800, evaluate on val200 (hyper-parameter search; never selects on test)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def finetune(
    data: Path,
    backbone: Path,
    petl: str,
    petl_options: dict[str, Any],
    train: dict[str, Any],
    *,
    seed: int,
    threads: int,
    val: bool = False,
    device: str = "auto",
) -> tuple[Any, dict[str, Any]]:
    """Build, train and evaluate one task model.

    Returns:
        (model, metrics without provenance, the evaluation with its per-image predictions).
    """
    from petlprune.data.vtab import VTABDataset, load_meta, make_loader
    from petlprune.models.backbone import data_config
    from petlprune.models.build import build_model
    from petlprune.train import TrainConfig, evaluate, fit, select_device, set_determinism

    cfg = TrainConfig.from_dict(train, source="--train")
    train_split, eval_split = splits_for(val)
    meta = load_meta(data)
    num_classes = num_classes_of(data, (train_split, eval_split))
    set_determinism(seed, threads)
    dev = select_device(device)
    model = build_model(backbone, petl=petl, petl_options=petl_options, num_classes=num_classes)
    dc = data_config(model)
    kw = dict(image_size=dc["image_size"], mean=dc["mean"], std=dc["std"], num_classes=num_classes, cache=True)
    train_ds, eval_ds = VTABDataset(data, train_split, **kw), VTABDataset(data, eval_split, **kw)
    print(f"finetune {petl} on {data} ({train_split}: {len(train_ds)}, {eval_split}: {len(eval_ds)}, "
          f"{num_classes} classes), {sum(p.numel() for p in model.parameters() if p.requires_grad):,} "
          f"trainable params, device {dev}", flush=True)
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=seed)
    history = fit(model, loader, cfg, device=dev, seed=seed, log=lambda s: print(s, flush=True))
    result = evaluate(model, make_loader(eval_ds, 256, shuffle=False, seed=seed), dev, cfg.precision)
    print(f"{eval_split} top1 {result['top1']:.4f} (n={result['n']})", flush=True)
    metrics = {
        "task": meta.get("name", data.name),
        "petl": petl,
        "petl_options": model.petl_options,
        "seed": seed,
        "method": None,
        "budget": None,
        "top1": result["top1"],
        "eval_loss": result["loss"],
        "n_eval": result["n"],
        "eval_split": eval_split,
        "train_split": train_split,
        "depth": len(model.blocks),
        "num_classes": num_classes,
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train": cfg.to_dict(),
        "history": history,
    }
    return model.cpu(), metrics, result


def run(args: argparse.Namespace) -> None:
    from petlprune.io import atomic_write_json, provenance
    from petlprune.models.build import save_task_model
    from petlprune.train import peak_memory_mb, select_device

    t0 = time.perf_counter()
    from petlprune.train import save_predictions

    model, metrics, result = finetune(args.data, args.backbone, args.petl, args.petl_options, args.train,
                              seed=args.seed, threads=args.threads, val=args.val, device=args.device)
    dev = select_device(args.device)
    save_task_model(args.out / "model.pt", model, backbone=args.backbone, petl=args.petl,
                    petl_options=model.petl_options, num_classes=metrics["num_classes"],
                    train_split=metrics["train_split"])
    metrics["provenance"] = provenance(
        device=str(dev), seed=args.seed, wall_seconds=time.perf_counter() - t0,
        peak_memory_mb=peak_memory_mb(dev), threads=args.threads, argv=getattr(args, "argv", None),
        backbone=str(args.backbone), data=str(args.data),
    )
    save_predictions(args.out / "predictions.npz", metrics["eval_split"], pred=result)
    atomic_write_json(args.out / "metrics.json", metrics)  # written last: its presence means the run finished
