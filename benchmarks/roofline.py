"""The trainer against this CPU's peak: GEMM peak, achieved training/eval FLOP/s, and what is lost where.

Prints, at ``--threads`` (default 1: what every study job uses):

- the measured GEMM peak, fp32 and bf16 (``torch.matmul`` on tensors of that dtype), at the shapes the
  default tier's model multiplies (a batch of 64 images is 64 x 17 = 1088 tokens of width 96: qkv
  1088x96 @ 96x288, fc1 1088x96 @ 96x384, fc2 1088x384 @ 384x96) and at 2048^3;
- the trainer's (``petlprune.train.fit``) images/s and FLOP/s for a fine-tune epoch (adapter PETL, 12
  blocks) and a re-train epoch (the same model cut to 6 blocks, as the tier's d6 budgets), fp32 and bf16
  autocast, timed interleaved (A/B in the same rounds, the median kept), and ``evaluate`` likewise;
- the ratios achieved / peak;
- a torch.profiler breakdown of training steps: self CPU time in GEMMs, attention, elementwise/norm
  work and the optimizer, and the rest of the wall time (Python and dispatch overhead).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over the forward and backward that
actually run, on one batch (matmuls, attention and convolutions; elementwise work counts zero, as in
any roofline). The model is built on ``RESULTS/backbone/*.pt`` when there is one, else randomly
initialised with the same shape (same FLOPs); data are random images held in memory, so the loader
costs nothing. ``--json OUT`` writes the figures (keys ``device``, ``train_flops_per_s``,
``eval_flops_per_s``, ``gemm_peak_flops_per_s`` are read by other scripts; keep them).
Results: book/reliability.md, "Performance".

    python benchmarks/roofline.py --json /tmp/roofline.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _suite import format_table  # noqa: E402
from trainer_overhead import make_model  # noqa: E402

__all__ = ["gemm_rate", "train_flops_per_image", "profile_breakdown", "main"]

SHAPES = {"qkv 1088x96@96x288": (1088, 96, 288), "fc1 1088x96@96x384": (1088, 96, 384),
          "fc2 1088x384@384x96": (1088, 384, 96), "2048^3": (2048, 2048, 2048)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """FLOP/s of ``(m, k) @ (k, n)`` in ``dtype``: the best of 3 timed runs of ~``seconds`` each."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        torch.matmul(a, b)
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds / 3:
        torch.matmul(a, b)
        reps += 1
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        best = max(best, 2.0 * m * k * n * reps / (time.perf_counter() - t0))
    return best


def _step(model, x, y, opt, precision: str) -> None:
    import torch.nn.functional as F

    from petlprune.train import _autocast

    with _autocast(x.device, precision):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def train_flops_per_image(model, x, y, precision: str) -> tuple[float, float]:
    """(training FLOPs, forward-only FLOPs) per image, counted on one batch ``x`` (B, 3, H, W)."""
    from torch.utils.flop_counter import FlopCounterMode

    from petlprune.train import _autocast

    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with FlopCounterMode(display=False) as fc:
        _step(model, x, y, opt, precision)
    train = fc.get_total_flops()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc, _autocast(x.device, precision):
        model(x)
    return train / x.shape[0], fc.get_total_flops() / x.shape[0]


# Profiler op names → what they are (self CPU time; the first match wins).
CATEGORIES = [
    ("attention", ("scaled_dot_product", "attention", "softmax")),
    ("gemm", ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "mkldnn", "dot")),
    ("optimizer", ("_foreach", "adam")),
    ("elementwise/norm", ("add", "mul", "div", "sub", "gelu", "norm", "copy", "to", "cat", "sum", "mean",
                          "fill", "zero", "sqrt", "where", "clone", "cross_entropy", "nll", "exp", "max", "relu")),
]


def _category(name: str) -> str:
    low = name.lower().removeprefix("aten::")
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other ops"


def profile_breakdown(model, x, y, precision: str, steps: int = 6) -> dict[str, Any]:
    """Wall time of ``steps`` training steps split into op categories (self CPU time) and the rest."""
    from torch.profiler import ProfilerActivity, profile

    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        _step(model, x, y, opt, precision)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            _step(model, x, y, opt, precision)
        wall = time.perf_counter() - t0
    cats: dict[str, float] = {}
    ops = []
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        s = ev.self_cpu_time_total / 1e6
        cats[_category(ev.key)] = cats.get(_category(ev.key), 0.0) + s
        ops.append((ev.key, s, ev.count))
    in_ops = sum(cats.values())
    # The profiler's own cost inflates the non-op share; also time the same steps unprofiled.
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(model, x, y, opt, precision)
    plain = time.perf_counter() - t0
    cats["python/dispatch (wall - ops)"] = max(0.0, plain - in_ops)
    # The fixed cost of a step (Python, dispatch, optimizer, per-op overheads): a step at batch 2
    # does 1/32 of batch 64's arithmetic, so its time bounds the part that does not scale with B.
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(model, x[:2], y[:2], opt, precision)
    fixed = time.perf_counter() - t0
    calls = sum(ev.count for ev in prof.key_averages() if ev.key.startswith("aten::")) / steps
    ops.sort(key=lambda r: -r[1])
    return {"wall_s_profiled": wall, "wall_s": plain, "steps": steps, "fixed_s_batch2": fixed,
            "fixed_share": fixed / plain, "aten_calls_per_step": calls,
            "share": {k: v / plain for k, v in cats.items()}, "seconds": cats,
            "top_ops": [{"op": k, "self_s": s, "calls": c} for k, s, c in ops[:12]]}


def _fit_seconds(model, loader, precision: str) -> float:
    from petlprune.train import TrainConfig, fit

    cfg = TrainConfig(epochs=1, lr=1e-3, weight_decay=1e-4, warmup_epochs=0, batch_size=64, precision=precision)
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    fit(m, loader, cfg, seed=0, log=None)
    return time.perf_counter() - t0


def _eval_seconds(model, loader, precision: str) -> float:
    from petlprune.train import evaluate

    t0 = time.perf_counter()
    evaluate(model, loader, precision=precision)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results tree with backbone/*.pt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=1024, help="images per timed epoch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved fp32/bf16 rounds (median kept)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]

    from petlprune.data.vtab import make_loader
    from petlprune.models.surgery import keep_blocks
    from petlprune.train import autocast_dtype, cpu_has_native_bf16

    native = cpu_has_native_bf16()
    precisions = ["fp32", "bf16"] if autocast_dtype("bf16", "cpu") is not None else ["fp32"]
    peaks: dict[str, dict[str, float]] = {p: {} for p in DTYPES}
    for name, (m, k, n) in SHAPES.items():
        for p, dt in DTYPES.items():
            peaks[p][name] = gemm_rate(m, k, n, dt)
    peak = {p: max(v.values()) for p, v in peaks.items()}

    torch.manual_seed(0)
    ft, source = make_model(args.results, num_classes=10)
    rt = keep_blocks(copy.deepcopy(ft), list(range(6)))
    size = ft.patch_embed.img_size
    data = torch.utils.data.TensorDataset(torch.randn(args.images, 3, *size), torch.randint(0, 10, (args.images,)))
    loader = make_loader(data, 64, shuffle=True, seed=0, workers=0)
    eval_loader = make_loader(data, 256, shuffle=False, seed=0, workers=0)
    x, y = next(iter(loader))

    models = {"fine-tune (12 blocks)": ft, "re-train (6 blocks)": rt}
    counts = {(mn, p): train_flops_per_image(mod, x, y, p) for mn, mod in models.items() for p in precisions}
    secs: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):  # A/B interleaved: a slow moment of a shared machine hits both alike
        for mn, mod in models.items():
            for p in precisions:
                secs.setdefault((mn, p, "train"), []).append(_fit_seconds(mod, loader, p))
                secs.setdefault((mn, p, "eval"), []).append(_eval_seconds(mod, eval_loader, p))
    rows = []
    for (mn, p, what), ts in secs.items():
        per_image = counts[(mn, p)][0 if what == "train" else 1]
        ips = args.images / float(np.median(ts))
        rows.append({"model": mn, "pass": what, "precision": p, "images_per_s": ips,
                     "gflop_per_image": per_image / 1e9, "gflop_per_s": ips * per_image / 1e9,
                     "of_peak": ips * per_image / peak[p], "all_s": " ".join(f"{t:.2f}" for t in ts)})
    prof = {p: profile_breakdown(ft, x, y, p) for p in precisions}

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16 {native}, threads {args.threads}, "
          f"load before {load:.2f}; model: adapter on {source}")
    print("GEMM peak (GFLOP/s, one matmul in that dtype):")
    print(format_table([{"shape": s, **{p: peaks[p][s] / 1e9 for p in DTYPES}} for s in SHAPES]))
    print("\ntrainer (fit / evaluate), achieved vs the best GEMM rate of the same precision:")
    print(format_table(rows))
    for p, pr in prof.items():
        print(f"\nprofile, {pr['steps']} fine-tune steps of batch 64, {p}: {pr['wall_s']:.3f} s unprofiled; "
              f"{pr['aten_calls_per_step']:.0f} aten calls per step; the same steps at batch 2 (fixed cost: "
              f"Python, dispatch, optimizer): {pr['fixed_s_batch2']:.3f} s = {pr['fixed_share']:.0%}")
        print(format_table([{"where": k, "seconds": v, "share": pr["share"][k]} for k, v in pr["seconds"].items()]))
        print(format_table(pr["top_ops"]))
    best = {p: next(r for r in rows if r["model"].startswith("fine") and r["pass"] == w and r["precision"] == p)
            for p in precisions for w in ("train",)}
    ev = next(r for r in rows if r["model"].startswith("fine") and r["pass"] == "eval" and r["precision"] == "fp32")
    doc = {"device": "cpu", "threads": args.threads, "load_before": load, "load_after": os.getloadavg()[0],
           "native_bf16": native, "model": source,
           "train_flops_per_s": best["fp32"]["gflop_per_s"] * 1e9, "eval_flops_per_s": ev["gflop_per_s"] * 1e9,
           "gemm_peak_flops_per_s": peak, "gemm_flops_per_s_by_shape": peaks,
           "train_flops_per_s_bf16": best["bf16"]["gflop_per_s"] * 1e9 if "bf16" in best else None,
           "rows": rows, "profile": prof}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
