"""Measured speed-up of every pruned model vs its FLOPs-ideal speed-up, at batch 1 and 64.

For each run of the results tree, the fine-tuned model and every pruned model (``pruned/*/model.pt``)
are rebuilt and timed like ``measure.throughput`` does (median of timed passes, after a warm-up;
wall time and, less sensitive to other processes, this process's CPU time). The models of a run are timed
INTERLEAVED, ``--rounds`` times, and each model's figure is the median over the rounds: a change of
load during the run then moves all models alike instead of biasing whichever was timed last.

    ideal = FLOPs(fine-tuned) / FLOPs(pruned)          measured = images/s(pruned) / images/s(fine-tuned)

Where measured falls short of ideal, a depth scan says why: the first fine-tuned model cut to several
depths (``surgery.keep_blocks``) is timed (interleaved), latency(d) = a + b d is fitted, and so is
FLOPs(d) = F0 + Fb d. A fixed time ``a`` that is
a larger share of the full model's latency than F0 is of its FLOPs (patch embedding, final norm, head,
and per-call overhead that FLOPs do not count) caps the speed-up below the FLOPs ideal:
``time-ideal = (a + b L) / (a + b d)``.

    python benchmarks/pruned_speedup.py --results /tmp/timed/results
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _suite import add_common_arguments, format_table, write_result  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["interleaved_latency", "speedup_rows", "depth_fit", "main"]


def _batch_times(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> tuple[float, float]:
    """Median wall and CPU ms of one forward pass of ``x`` (eval, inference_mode), after ``warmup``."""
    model.eval()
    wall, cpu = np.empty(repeats), np.empty(repeats)
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for i in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            model(x)
            wall[i], cpu[i] = time.perf_counter() - w0, time.process_time() - c0
    return float(np.median(wall)) * 1e3, float(np.median(cpu)) * 1e3


def interleaved_latency(models: dict[str, nn.Module], batch_size: int, *, rounds: int, repeats: int,
                        warmup: int, input_shape: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """``{model: {"wall": ms, "cpu": ms}}``: median over ``rounds`` of each model's median batch time,
    the models timed in turn within each round (as ``measure.throughput`` times: median of passes)."""
    x = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
    for _ in range(rounds):
        for key, model in models.items():
            times[key].append(_batch_times(model, x, repeats, warmup))
    return {k: {"wall": float(np.median([w for w, _ in v])), "cpu": float(np.median([c for _, c in v]))}
            for k, v in times.items()}


def speedup_rows(base: dict[str, Any], pruned: list[dict[str, Any]], batch_sizes: list[int]) -> list[dict[str, Any]]:
    """One row per pruned model: ideal and measured speed-ups and their ratio per batch size.

    Args:
        base: ``{"flops", "latency_ms": {batch: ms}}`` of the fine-tuned model (optionally ``"cpu_ms"``
            likewise: the ratio from CPU time is then added as ``ratio_cpu_b{batch}``).
        pruned: the same plus ``"key"`` and ``"depth"`` for each pruned model.
    """
    rows = []
    for p in pruned:
        ideal = base["flops"] / p["flops"]
        row: dict[str, Any] = {"model": p["key"], "depth": p["depth"], "ideal": ideal}
        for b in batch_sizes:
            measured = base["latency_ms"][b] / p["latency_ms"][b]
            row[f"measured_b{b}"] = measured
            row[f"ratio_b{b}"] = measured / ideal
            if "cpu_ms" in p and b in p["cpu_ms"]:
                row[f"ratio_cpu_b{b}"] = base["cpu_ms"][b] / p["cpu_ms"][b] / ideal
        rows.append(row)
    return rows


def depth_fit(depths: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of values = a + b * depth."""
    slope, intercept = np.polyfit(np.asarray(depths, float), np.asarray(values, float), 1)
    return float(intercept), float(slope)


def _load(results: Path, model_pt: Path) -> nn.Module:
    from petlprune.io import load_checkpoint
    from petlprune.models.build import load_task_model

    backbone = results / "backbone" / f"{load_checkpoint(model_pt)['backbone']}.pt"
    from petlprune.stages.measure import deployed_model

    model, info = load_task_model(model_pt, backbone)
    return deployed_model(model, info).eval()  # timed as the study times it (SPA: sliced)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median kept)")
    parser.add_argument("--repeats", type=int, default=8, help="timed passes per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]

    from petlprune.io import read_json
    from petlprune.measure import flops, input_shape_of
    from petlprune.models.surgery import keep_blocks

    rows: list[dict[str, Any]] = []
    scan_model: nn.Module | None = None
    for finetune in sorted((args.results / "runs").glob("*/*/seed*/finetune/model.pt")):
        run = finetune.parents[1]
        task, petl = run.parents[1].name, run.parent.name
        if args.tasks is not None and task not in args.tasks:
            continue
        models = {"finetune": _load(args.results, finetune)}
        for pt in sorted(run.glob("pruned/*/model.pt")):
            models[pt.parent.name] = _load(args.results, pt)
        shape = input_shape_of(models["finetune"])
        info = {k: {"flops": flops(m, shape), "depth": len(m.blocks), "key": k, "latency_ms": {}, "cpu_ms": {}}
                for k, m in models.items()}
        for b in args.batch_sizes:
            lat = interleaved_latency(models, b, rounds=args.rounds, repeats=args.repeats, warmup=args.warmup,
                                      input_shape=shape)
            for k, ms in lat.items():
                info[k]["latency_ms"][b], info[k]["cpu_ms"][b] = ms["wall"], ms["cpu"]
        scan_model = scan_model or models["finetune"]
        task_rows = speedup_rows(info["finetune"], [v for k, v in info.items() if k != "finetune"], args.batch_sizes)
        for r in task_rows:
            stored = run / "pruned" / r["model"] / "efficiency.json"
            base_eff = run / "finetune" / "efficiency.json"
            if stored.is_file() and base_eff.is_file():  # the DAG's own figure, timed while other jobs ran
                s, f = read_json(stored)["throughput"], read_json(base_eff)["throughput"]
                for b in args.batch_sizes:
                    if str(b) in s and str(b) in f:
                        r[f"stored_b{b}"] = s[str(b)]["images_per_s"] / f[str(b)]["images_per_s"]
            rows.append({"task": task, "petl": petl, "method": r["model"].rsplit("-", 1)[0],
                         "budget": r["model"].rsplit("-", 1)[1], **r})
        print(f"{task}/{petl}: {len(models) - 1} pruned models timed (load {os.getloadavg()[0]:.2f})", flush=True)
    if not rows:
        print(f"{args.results}/runs: no fine-tuned model with pruned models", file=sys.stderr)
        return 1
    cols = ["task", "model", "depth", "ideal"] + [f"{k}_b{b}" for b in args.batch_sizes
                                                  for k in ("measured", "ratio", "ratio_cpu", "stored")]
    print(format_table(rows, cols))

    # Where the rest goes: one scan over depths of one fine-tuned model, timed interleaved in one go.
    full = len(scan_model.blocks)
    depths = sorted({1, full // 4, full // 2, 3 * full // 4, full} - {0})
    scan = {d: keep_blocks(copy.deepcopy(scan_model), list(range(d))).eval() for d in depths}
    shape = input_shape_of(scan_model)
    f0, fb = depth_fit(depths, [flops(m, shape) for m in scan.values()])
    summary: dict[str, Any] = {"full_depth": full, "scan_depths": depths, "flops_fixed_share": f0 / (f0 + fb * full)}
    pruned = [r for r in rows if r["depth"] < full]
    for b in args.batch_sizes:
        lat = interleaved_latency(scan, b, rounds=args.rounds, repeats=args.repeats, warmup=args.warmup,
                                  input_shape=shape)
        a, slope = depth_fit(depths, [lat[d]["wall"] for d in depths])
        summary[f"b{b}"] = {
            "latency_fixed_ms": a, "latency_per_block_ms": slope,
            "latency_fixed_share": a / (a + slope * full),
            "mean_ratio_pruned": float(np.mean([r[f"ratio_b{b}"] for r in pruned])) if pruned else None,
            "mean_ratio_cpu_pruned": float(np.mean([r[f"ratio_cpu_b{b}"] for r in pruned])) if pruned else None,
            "min_ratio_pruned": float(np.min([r[f"ratio_b{b}"] for r in pruned])) if pruned else None,
            "mean_time_ideal_ratio": float(np.mean([((a + slope * full) / (a + slope * r["depth"])) / r["ideal"]
                                                    for r in pruned])) if pruned else None,
        }
        s = summary[f"b{b}"]
        print(f"batch {b}: depth scan {depths}: latency = {a:.2f} ms + {slope:.3f} ms x depth (fixed share "
              f"{s['latency_fixed_share']:.1%}; FLOPs fixed share {summary['flops_fixed_share']:.1%}), predicting "
              f"measured/ideal {s['mean_time_ideal_ratio'] or float('nan'):.3f}; pruned models (depth < {full}): "
              f"mean measured/ideal {s['mean_ratio_pruned'] or float('nan'):.3f} (CPU time: "
              f"{s['mean_ratio_cpu_pruned'] or float('nan'):.3f}), min {s['min_ratio_pruned'] or float('nan'):.3f}")
    print(f"threads {args.threads}; load before {load:.2f}, after {os.getloadavg()[0]:.2f}")
    write_result(args, "pruned_speedup", {"rows": rows, "summary": summary, "rounds": args.rounds,
                                          "repeats": args.repeats, "batch_sizes": args.batch_sizes}, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
