"""Time the batched CKA matrix against a Python loop over block pairs calling ``linear_cka``.

Usage::

    python benchmarks/cka_speed.py [--blocks 12] [--samples 1000] [--dims 96 768] [--repeats 3]
                                   [--threads 1] [--estimator biased] [--out [PATH]]

For each width d, features (blocks, samples, d) with a shared latent signal are drawn once; the
batched ``cka_matrix`` and two loops are timed (best of ``--repeats``): the loop over all L² ordered
pairs (how a CKA heatmap is usually filled) and the loop over the L(L-1)/2 pairs above the diagonal
(the least work a pairwise loop can do). Prints a table with the speed-ups and the largest absolute
difference between the batched matrix and the loops'; ``--out`` also writes them as JSON (a bare
``--out`` writes ``cka_speed.json`` next to this script).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from petlprune.analysis.cka import cka_matrix, linear_cka


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def pair_loop(feats: torch.Tensor, estimator: str, upper_only: bool) -> np.ndarray:
    num = feats.shape[0]
    mat = np.eye(num)
    for i in range(num):
        for j in range(i + 1 if upper_only else 0, num):
            if i == j:
                continue
            mat[i, j] = linear_cka(feats[i], feats[j], estimator=estimator)
            if upper_only:
                mat[j, i] = mat[i, j]
    return mat


def features(blocks: int, samples: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(blocks, samples, dim) float32: a common 16-d latent signal plus block-specific noise."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(samples, 16, generator=gen)
    mix = torch.randn(blocks, 16, dim, generator=gen)
    noise = torch.randn(blocks, samples, dim, generator=gen) * torch.linspace(0.5, 3.0, blocks)[:, None, None]
    return (latent @ mix + noise).float()  # (L, n, d)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--dims", type=int, nargs="+", default=[96, 768])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--estimator", choices=["biased", "unbiased"], default="biased")
    parser.add_argument("--out", type=Path, nargs="?", default=None, const=Path(__file__).with_suffix(".json"),
                        help="write the results as JSON (bare --out: cka_speed.json next to this script)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    for dim in args.dims:
        feats = features(args.blocks, args.samples, dim)
        t_batched, mat = best_time(lambda f=feats: cka_matrix(f, estimator=args.estimator), args.repeats)
        t_full, loop_full = best_time(lambda f=feats: pair_loop(f, args.estimator, False), args.repeats)
        t_upper, loop_upper = best_time(lambda f=feats: pair_loop(f, args.estimator, True), args.repeats)
        mat = mat.numpy()
        rows.append({
            "blocks": args.blocks, "samples": args.samples, "dim": dim,
            "batched_s": t_batched, "loop_all_pairs_s": t_full, "loop_upper_pairs_s": t_upper,
            "speedup_all_pairs": t_full / t_batched, "speedup_upper_pairs": t_upper / t_batched,
            "max_abs_diff": float(max(np.abs(mat - loop_full).max(), np.abs(mat - loop_upper).max())),
        })

    header = f"{'L×n×d':>14} {'batched s':>10} {'loop L² s':>10} {'×':>6} {'loop L(L-1)/2 s':>16} {'×':>6} {'max |Δ|':>9}"
    print(f"cka_matrix vs linear_cka pair loop ({args.estimator}, {args.threads} thread(s), best of {args.repeats})")
    print(header)
    for r in rows:
        print(f"{r['blocks']:>4}×{r['samples']}×{r['dim']:<4} {r['batched_s']:>10.3f} {r['loop_all_pairs_s']:>10.3f} "
              f"{r['speedup_all_pairs']:>6.1f} {r['loop_upper_pairs_s']:>16.3f} {r['speedup_upper_pairs']:>6.1f} "
              f"{r['max_abs_diff']:>9.1e}")
    result = {
        "estimator": args.estimator, "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "rows": rows,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
