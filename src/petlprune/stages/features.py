"""``petlprune features``: the CLS token of every block of a fine-tuned model, in one forward pass.

Runs the task model in eval mode over one split (SLS: all of train800val200, in list order) and
writes ``features.npz`` with ``cls`` (L, n, d), ``embed`` (n, d) (the input of the first block) and
``labels`` (n,). Every feature-based scorer (SLS, SGLP's CLS variant, the angular baseline) reads it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from petlprune.stages._args import positive_int
from petlprune.stages._data import task_dataset

__all__ = ["add_arguments", "run", "task_dataset"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="task model (RUN_DIR/finetune/model.pt)")
    parser.add_argument("--backbone", type=Path, required=True, help="the backbone file the task was trained on")
    parser.add_argument("--data", type=Path, required=True, help="task folder in the VTAB-1k layout")
    parser.add_argument("--split", default="train800val200", help="list file stem to run over")
    parser.add_argument("--out", type=Path, required=True, help="features file to write (RUN_DIR/features.npz)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def run(args: argparse.Namespace) -> None:
    import torch

    from petlprune.analysis.features import block_features, save_features
    from petlprune.data.vtab import make_loader
    from petlprune.models.build import load_task_model
    from petlprune.train import select_device

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    model, info = load_task_model(args.model, args.backbone)
    ds = task_dataset(args.data, args.split, info)
    print(f"features: {args.model} on {args.data}/{args.split}.txt ({len(ds)} images, "
          f"{len(model.blocks)} blocks, device {device})", flush=True)
    t_pass = time.perf_counter()
    cls, embed, labels = block_features(model, make_loader(ds, args.batch_size, shuffle=False, seed=0), device)
    save_features(args.out, cls, embed, labels, seconds=time.perf_counter() - t_pass, split=args.split)
    print(f"features: wrote {args.out} cls {cls.shape} embed {embed.shape} labels {labels.shape} "
          f"in {time.perf_counter() - t0:.1f}s", flush=True)
