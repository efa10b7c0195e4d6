"""bf16 autocast vs fp32 on the CPU: the accuracy effect of the trainer's ``precision``, paired on the same seeds.

For every task and seed, the study's fine-tuning (``petlprune.stages.finetune.finetune``, the recipe of
``--config``'s ``finetune`` with ``precision`` set) runs twice, fp32 then bf16, back to back (interleaved,
so that a slow moment of a shared machine hits both alike), on the same data, backbone, seed and
initialisation. Per task, the top-1 difference bf16 − fp32 on the test images is combined over seeds
with the report's own helper (``report.stats.combine_seeds``: stratified paired bootstrap, widened to
the t-interval over seeds with three or more). Also the fine-tune seconds of each, for the speed-up.
Results: book/reliability.md, "Performance".

    python benchmarks/precision_paired.py --results /work/baseline/results --seeds 0 1 2 --json /tmp/p.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from _suite import format_table  # noqa: E402

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="results tree with data/<task> and backbone/*.pt")
    parser.add_argument("--config", type=Path, default=ROOT / "workflow/config/default.yaml")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: the config's tasks")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--petl", default="adapter")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (a quicker check)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--save", type=Path, default=None,
                        help="keep each run's predictions here; a later call reuses them (an interrupted check goes on)")
    parser.add_argument("--only-table", action="store_true", help="train nothing: the table of the runs in --save")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]

    from petlprune.report.stats import combine_seeds
    from petlprune.stages.finetune import finetune
    from petlprune.train import autocast_dtype

    if autocast_dtype("bf16", "cpu") is None:
        print("this CPU has no native bf16: precision bf16 trains in fp32 here, nothing to compare", file=sys.stderr)
        return 1
    config = yaml.safe_load(args.config.read_text())
    tasks = args.tasks or config["data"]["tasks"]
    recipe = dict(config["finetune"])
    if args.epochs is not None:
        recipe["epochs"] = args.epochs
    options = config["petl"]["options"].get(args.petl, {})
    backbone = sorted((args.results / "backbone").glob("*.pt"))[0]
    runs: dict[tuple[str, int, str], dict] = {}
    if args.save is not None:  # runs kept by an earlier, interrupted call
        for f in sorted(args.save.glob("*.npz")):
            task, seed, precision = f.stem.rsplit("-", 2)
            with np.load(f) as z:
                runs[(task, int(seed), precision)] = {k: z[k] if z[k].ndim else float(z[k]) for k in z.files}
    # Seeds outer: an interrupted call has every task's first seeds, not all seeds of a few tasks.
    for seed in args.seeds:
        for task in tasks:
            for precision in ("fp32", "bf16"):
                if (task, seed, precision) in runs or args.only_table:
                    continue
                t0 = time.perf_counter()
                _, metrics, result = finetune(args.results / "data" / task, backbone, args.petl, options,
                                              {**recipe, "precision": precision}, seed=seed, threads=1, device="cpu")
                runs[(task, seed, precision)] = {"seconds": time.perf_counter() - t0, "top1": metrics["top1"],
                                                 "labels": result["labels"], "pred": result["pred"]}
                if args.save is not None:
                    args.save.mkdir(parents=True, exist_ok=True)
                    np.savez(args.save / f"{task}-{seed}-{precision}.npz", **runs[(task, seed, precision)])
                print(f"{task} seed {seed} {precision}: top1 {metrics['top1']:.4f}, "
                      f"{runs[(task, seed, precision)]['seconds']:.1f} s", flush=True)
    rows = []
    for task in tasks:
        seeds = [s for s in args.seeds if (task, s, "bf16") in runs and (task, s, "fp32") in runs]
        if not seeds:
            continue
        pairs = [(runs[(task, s, "bf16")]["labels"], runs[(task, s, "bf16")]["pred"], runs[(task, s, "fp32")]["pred"])
                 for s in seeds]
        d = combine_seeds(pairs)
        secs = {p: float(np.sum([runs[(task, s, p)]["seconds"] for s in seeds])) for p in ("fp32", "bf16")}
        rows.append({"task": task, "seeds": len(seeds),
                     "fp32_top1": 100 * np.mean([runs[(task, s, "fp32")]["top1"] for s in seeds]),
                     "bf16_top1": 100 * np.mean([runs[(task, s, "bf16")]["top1"] for s in seeds]),
                     "diff_pp": d.diff, "lo": d.lo, "hi": d.hi,
                     "fp32_s": secs["fp32"], "bf16_s": secs["bf16"], "speedup": secs["fp32"] / secs["bf16"]})
    print(f"bf16 - fp32, {args.petl} fine-tune, seeds {args.seeds}, load before {load:.2f}")
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "seeds": args.seeds, "recipe": recipe, "load_before": load,
                                         "load_after": os.getloadavg()[0],
                                         "per_run": [{"task": t, "seed": s, "precision": p, "top1": r["top1"],
                                                      "seconds": r["seconds"]} for (t, s, p), r in runs.items()]},
                                        indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
