"""Block features in one pass (``analysis.features.block_features``) vs one pass per block.

The per-block alternative is what a scorer written block by block does: for block l, run the model up
to block l (timm's ``forward_intermediates(indices=[l], stop_early=True)``) over the whole set and keep
its CLS token. That costs 1 + 2 + ... + L block evaluations instead of L. Both are timed (best of
``--repeats``, the two interleaved) on a fine-tuned model of the results tree over its train800val200
split (what the ``features`` stage embeds), and the features must agree. A bare pass over the loader (no model) is
timed too: reading the data again for every block is part of what one pass saves.

    python benchmarks/features_pass.py --results /tmp/timed/results [--task digits]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _suite import Timer, add_common_arguments, format_table, write_result  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["per_block_features", "load_finetuned", "main"]


@torch.no_grad()
def per_block_features(model: nn.Module, loader: Any) -> np.ndarray:
    """(L, n, d) CLS token of every block output, pre final norm: one pass over the data per block."""
    model.eval()
    out = []
    for layer in range(len(model.blocks)):
        parts = []
        for x, _ in loader:
            (_, prefix), = model.forward_intermediates(
                x, indices=[layer], norm=False, output_fmt="NLC", return_prefix_tokens=True,
                intermediates_only=True, stop_early=True)
            parts.append(prefix[:, 0].float())
        out.append(torch.cat(parts))
    return torch.stack(out).numpy()


def load_finetuned(results: Path, task: str, petl: str = "adapter", seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The fine-tuned model of ``runs/{task}/{petl}/seed{seed}`` with the backbone it names."""
    from petlprune.io import load_checkpoint
    from petlprune.models.build import load_task_model

    path = results / "runs" / task / petl / f"seed{seed}" / "finetune" / "model.pt"
    backbone = results / "backbone" / f"{load_checkpoint(path)['backbone']}.pt"
    return load_task_model(path, backbone)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--task", default=None, help="task (default: the first under RESULTS/runs)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timings of each way (best kept)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]

    from petlprune.analysis.features import block_features
    from petlprune.data.vtab import VTABDataset, make_loader

    task = args.task or sorted(p.name for p in (args.results / "runs").iterdir())[0]
    model, info = load_finetuned(args.results, task)
    ds = VTABDataset(args.results / "data" / task, "train800val200", image_size=info["image_size"],
                     mean=info["mean"], std=info["std"], cache=True)
    loader = make_loader(ds, args.batch_size, shuffle=False, seed=0)
    list(loader)  # decode and cache the images once, outside both timings
    one = data = per_block = float("inf")
    for _ in range(args.repeats):  # interleaved, best of each: a burst of load hits both alike
        with Timer() as t:
            cls, _, _ = block_features(model, loader)
        one = min(one, t.seconds)
        with Timer() as t:
            for _batch in loader:
                pass
        data = min(data, t.seconds)
        with Timer() as t:
            cls_loop = per_block_features(model, loader)
        per_block = min(per_block, t.seconds)
    diff = float(np.abs(cls - cls_loop).max())
    depth = len(model.blocks)
    rows = [{"way": "one pass (block_features)", "passes": 1, "block_evals": depth, "seconds": one, "data_seconds": data},
            {"way": "one pass per block", "passes": depth, "block_evals": depth * (depth + 1) // 2,
             "seconds": per_block, "data_seconds": depth * data}]
    print(f"task {task}: {len(ds)} images, {depth} blocks, batch {args.batch_size}, threads {args.threads}, "
          f"load {load:.2f}")
    print(format_table(rows))
    print(f"speed-up of one pass: {per_block / one:.2f}x (block evaluations {depth * (depth + 1) / 2 / depth:.1f}x); "
          f"max |difference| {diff:.2e}; one pass over the data alone: {data:.2f} s")
    write_result(args, "features_pass", {
        "task": task, "images": len(ds), "blocks": depth, "batch_size": args.batch_size, "rows": rows,
        "speedup": per_block / one, "data_pass_seconds": data, "max_abs_diff": diff}, load)
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
