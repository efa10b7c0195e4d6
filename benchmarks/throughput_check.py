"""Cross-check ``petlprune.measure.throughput`` against an independent, plainly written timing loop.

The embedded backbone (timm ``vit_tiny_patch16_224`` with img_size=32, patch_size=8, embed_dim=96,
depth=12, num_heads=3) is timed twice per batch size: by ``throughput`` (median of per-batch timings
under ``inference_mode``) and by a loop written differently (``no_grad``, one ``perf_counter`` around
N batches, mean). The two must agree within ``--tolerance`` (exit status 1 otherwise).

    python benchmarks/throughput_check.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import petlprune  # noqa: F401  (must precede timm: the torchvision compatibility step)

# isort: split
import timm
import torch

from petlprune.measure import throughput


def plain_images_per_s(model: torch.nn.Module, x: torch.Tensor, batches: int, warmup: int) -> float:
    """Mean images/s over ``batches`` back-to-back forward passes, timed as one block."""
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return batches * x.shape[0] / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed relative disagreement")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=96, depth=12, num_heads=3, num_classes=10)
    model.to(args.device).eval()

    # Other processes skew both timings: the load average says whether the machine was quiet.
    print(f"threads={torch.get_num_threads()} device={args.device} warmup={args.warmup} repeats={args.repeats} "
          f"cpus={os.cpu_count()} load before={os.getloadavg()[0]:.2f}")
    print(f"{'batch':>5} | {'throughput() img/s':>18} | {'plain loop img/s':>16} | {'ratio':>6} | {'latency ms (iqr)':>16}")
    ok = True
    for b in args.batch_sizes:
        ours = throughput(model, b, input_shape=(3, 32, 32), warmup=args.warmup, repeats=args.repeats,
                          device=args.device)
        x = torch.rand(b, 3, 32, 32, device=args.device)
        plain = plain_images_per_s(model, x, batches=args.repeats, warmup=args.warmup)
        ratio = ours["images_per_s"] / plain
        ok &= abs(ratio - 1) <= args.tolerance
        print(f"{b:>5} | {ours['images_per_s']:>18.1f} | {plain:>16.1f} | {ratio:>6.3f} | "
              f"{ours['latency_ms']:>7.3f} ({ours['latency_ms_iqr']:.3f})")
    print(f"load after={os.getloadavg()[0]:.2f}; ", "agree within" if ok else "DISAGREE beyond", f"{args.tolerance:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
