"""Throughput of ``petlprune.train.fit`` vs a bare PyTorch loop on the same model and data.

The model is the embedded backbone with adapters (the fine-tuning the study runs most: only PETL
modules and head train); built from ``RESULTS/backbone/*.pt`` when there is one, else randomly
initialised with the same shape. The data are ``--images`` random images with random labels held in
memory, so the loader costs the same for both and the difference is the trainer's own work (AdamW
param groups, the LR schedule, autocast context, the per-epoch loss check and accuracy count).
Both run the same epochs from the same initial weights; the two are timed interleaved, ``--rounds``
times, and the median kept.

    python benchmarks/trainer_overhead.py --results /tmp/timed/results
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _suite import Timer, add_common_arguments, format_table, write_result  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["bare_loop", "make_model", "main"]

EMBEDDED = {"timm_model": "vit_tiny_patch16_224",
            "timm_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 12, "num_heads": 3}}


def bare_loop(model: nn.Module, loader: Any, epochs: int, lr: float) -> float:
    """The least a training loop does: AdamW over the trainable parameters, cross-entropy, step.

    Returns:
        The mean loss of the last epoch.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    loss_sum, steps = 0.0, 0
    for _ in range(epochs):
        loss_sum, steps = torch.zeros(()), 0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            steps += 1
    return float(loss_sum) / max(steps, 1)


def make_model(results: Path, num_classes: int) -> tuple[nn.Module, str]:
    """Adapter model on the results tree's backbone (or a random one of the embedded shape)."""
    from petlprune.models.build import build_model

    backbones = sorted((results / "backbone").glob("*.pt")) if (results / "backbone").is_dir() else []
    if backbones:
        return build_model(backbones[0], petl="adapter", num_classes=num_classes), str(backbones[0])
    return build_model(None, petl="adapter", num_classes=num_classes, spec=EMBEDDED), "random (embedded shape)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]

    from petlprune.data.vtab import make_loader
    from petlprune.train import TrainConfig, fit

    torch.manual_seed(0)
    model0, source = make_model(args.results, num_classes=10)
    size = model0.patch_embed.img_size
    data = torch.utils.data.TensorDataset(torch.randn(args.images, 3, *size), torch.randint(0, 10, (args.images,)))
    loader = make_loader(data, args.batch_size, shuffle=True, seed=0)
    cfg = TrainConfig(epochs=args.epochs, lr=1e-3, weight_decay=1e-4, warmup_epochs=0, batch_size=args.batch_size)
    seconds: dict[str, list[float]] = {"fit": [], "bare": []}
    cpu: dict[str, list[float]] = {"fit": [], "bare": []}
    for _ in range(args.rounds):
        for way in ("bare", "fit"):
            model = copy.deepcopy(model0)
            with Timer() as t:
                if way == "fit":
                    fit(model, loader, cfg, seed=0, log=None)
                else:
                    bare_loop(model, loader, args.epochs, cfg.lr)
            seconds[way].append(t.seconds)
            cpu[way].append(t.cpu_seconds)
    images = args.images * args.epochs
    rows = [{"loop": way, "median_s": float(np.median(s)), "images_per_s": images / float(np.median(s)),
             "median_cpu_s": float(np.median(cpu[way])), "images_per_cpu_s": images / float(np.median(cpu[way])),
             "all_s": " ".join(f"{v:.2f}" for v in s)} for way, s in seconds.items()]
    ratio = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    ratio_cpu = rows[0]["images_per_cpu_s"] / rows[1]["images_per_cpu_s"]
    trainable = sum(p.numel() for p in model0.parameters() if p.requires_grad)
    print(f"model: adapter on {source}, {trainable:,} trainable params; {args.images} images x {args.epochs} epochs, "
          f"batch {args.batch_size}, threads {args.threads}, load before {load:.2f}")
    print(format_table(rows))
    print(f"fit / bare throughput: {ratio:.3f} (wall), {ratio_cpu:.3f} (CPU time)")
    write_result(args, "trainer_overhead", {"rows": rows, "ratio": ratio, "ratio_cpu": ratio_cpu, "model": source, "trainable": trainable,
                                            "images": args.images, "epochs": args.epochs,
                                            "batch_size": args.batch_size}, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
