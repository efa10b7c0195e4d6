"""``petlprune measure``: parameters, FLOPs, throughput and latency of trained models.

One job measures many model directories, one at a time with every thread it was given, so that
timings never share the machine with each other and torch is imported once. Each directory's
``model.pt`` is loaded through ``models.build.load_task_model`` and ``efficiency.json`` is written
next to it, atomically.

A method with a ``deploy(model, plan)`` hook (SPA, fine-pruning) is timed, and its FLOPs and forward
parameters counted, in its deployed form (channels sliced); an unpruned SPLoRA model deploys fused.
What a task stores is always counted on the task model as loaded (masks, not slices).

Timing is interleaved: after each model's counts, every model of the job is timed round-robin, one
pass of each model per repeat at each batch size, on the same device with the same threads. A slow
moment of the machine then hits every model alike, and repeat ``i`` of two models are paired:
``throughput[bs]["times_s"]`` holds the per-repeat seconds of one batch, from which the report
bootstraps the interval of a speed-up ratio (``report.stats.speedup_interval``).

Speed depends on the architecture, not on the weights: models of the same architecture (the same
module tree and tensor shapes, :func:`architecture_key`; e.g. every d6 layer selection, the unpruned
model and its re-trained control, or one model's seeds when a job measures several seeds) are timed
once, and each keeps its own counts (parameters, stored, FLOPs). ``timed_as`` names the directory whose
model was timed; two such models then have the same ``times_s`` and a speed-up of exactly 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from petlprune.stages._args import non_negative_int, positive_int

__all__ = ["add_arguments", "run", "deployed_model", "has_deployed_form", "interleaved_times", "architecture_key"]


def _deploy_fn(info: dict):
    from petlprune.methods import get
    from petlprune.models.surgery import slice_channels

    plan = info.get("plan")
    deploy = getattr(get(plan["method"]), "deploy", None) if plan is not None else None
    if deploy is not None:
        return deploy
    if info["petl"] == "splora":  # any other SPLoRA model (unpruned, or blocks removed) deploys fused (W + C R)
        return lambda m, _plan: slice_channels(m)
    return None


def has_deployed_form(info: dict) -> bool:
    """Whether a loaded task model (``load_task_model``'s info) is timed in another, deployed form."""
    return _deploy_fn(info) is not None


def deployed_model(model, info: dict):
    """The form a task model is timed in: its method's ``deploy`` (SPA: fused and sliced), else itself."""
    from petlprune.methods import Plan

    fn = _deploy_fn(info)
    if fn is None:
        return model
    plan = info.get("plan")
    return fn(model, None if plan is None else Plan.from_dict(plan))


def architecture_key(model) -> str:
    """A digest of what a forward pass costs: the module tree (types and their settings, as ``repr``
    prints them) and every parameter's and buffer's name, shape and dtype (shared modules counted at
    each place they are used). Weights' values are not in it: they do not change the time."""
    import hashlib

    tensors = [(n, tuple(t.shape), str(t.dtype))
               for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]]
    return hashlib.sha256(f"{model!r}\n{tensors!r}".encode()).hexdigest()[:16]


def interleaved_times(models: list, batch_sizes, *, image_size: int, warmup: int, repeats: int,
                      device: str) -> list[dict[str, list[float]]]:
    """Per-repeat seconds of one batch of every model, timed round-robin (repeat i of all models together).

    Args:
        models: the models, already on ``device`` in eval mode.
        batch_sizes: batch sizes to time.
        image_size: side of the square input images.
        warmup: untimed passes of each model before the first repeat (at each batch size).
        repeats: timed passes per model and batch size.
        device: where they run.

    Returns:
        Per model, batch size (str) → the list of ``repeats`` times in seconds.
    """
    from petlprune.measure import input_shape_of, throughput

    out: list[dict[str, list[float]]] = [{} for _ in models]
    for b in batch_sizes:
        shapes = [input_shape_of(m, image_size) for m in models]
        for m, shape in zip(models, shapes, strict=True):
            if warmup:
                throughput(m, int(b), input_shape=shape, warmup=warmup - 1, repeats=1, device=device)
        times: list[list[float]] = [[] for _ in models]
        for _ in range(repeats):
            for i, (m, shape) in enumerate(zip(models, shapes, strict=True)):
                t = throughput(m, int(b), input_shape=shape, warmup=0, repeats=1, device=device)
                times[i].append(t["latency_ms"] / 1e3)
        for i in range(len(models)):
            out[i][str(int(b))] = times[i]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dirs", nargs="+", type=Path, metavar="MODEL_DIR",
                        help="directories holding model.pt; efficiency.json is written into each")
    parser.add_argument("--backbone", type=Path, required=True, help="the cached backbone file (results/backbone/*.pt)")
    parser.add_argument("--image-size", type=positive_int, required=True, help="side of the square input images")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 64], help="batch sizes to time")
    parser.add_argument("--warmup", type=non_negative_int, default=10, help="untimed passes before each timing")
    parser.add_argument("--repeats", type=positive_int, default=50, help="timed passes (the median is reported)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="torch device to measure on (e.g. cpu, cuda)")


def run(args: argparse.Namespace) -> None:
    import torch

    from petlprune.io import atomic_write_json
    from petlprune.measure import measure_model, stored_params
    from petlprune.models.build import load_task_model

    missing = [str(d / "model.pt") for d in args.model_dirs if not (d / "model.pt").is_file()]
    if missing:
        raise SystemExit(f"petlprune measure: model file(s) not found: {', '.join(missing)}")
    torch.set_num_threads(args.threads)
    timed, timed_dirs, results = [], [], []
    first: dict[str, int] = {}  # architecture key -> index in timed
    owner: list[int] = []  # per model dir: the index of the model timed for it
    for model_dir in args.model_dirs:
        model, info = load_task_model(model_dir / "model.pt", args.backbone)
        plan = info.get("plan")
        stored, deployed = None, model
        if has_deployed_form(info):
            # A model with a deployment form (SPA: fuse + slice channels) is timed and counted (FLOPs,
            # forward params) as deployed; what it stores is counted on the masked task model.
            stored = stored_params(plan, model)
            deployed = deployed_model(model, info)
        result = measure_model(
            deployed,
            image_size=args.image_size,
            # Counts, and one pass at the largest batch for this model's peak memory: the timings
            # are interleaved across the models below (a pass at every batch size here was waste).
            batch_sizes=[max(args.batch_sizes)],
            plan=plan,
            warmup=0,
            repeats=1,
            device=args.device,
        )
        if stored is not None:
            result.update(params_stored=stored["total"],
                          stored_breakdown={k: stored[k] for k in ("petl", "head", "plan", "backbone")},
                          deployed=True)
        key = architecture_key(deployed)
        if key not in first:  # the first model of each architecture is the one timed
            first[key] = len(timed)
            timed.append(deployed.eval())
            timed_dirs.append(model_dir)
        result["architecture"] = key
        owner.append(first[key])
        results.append(result)
        del model
    print(f"measure: {len(args.model_dirs)} models, {len(timed)} architecture(s) timed", file=sys.stderr, flush=True)
    per_arch = interleaved_times(timed, args.batch_sizes, image_size=args.image_size, warmup=args.warmup,
                                 repeats=args.repeats, device=args.device)
    per_model = [per_arch[i] for i in owner]
    import numpy as np

    for model_dir, result, times, i in zip(args.model_dirs, results, per_model, owner, strict=True):
        result["throughput"] = {}
        for b, ts in times.items():
            median = float(np.median(ts))
            q25, q75 = np.percentile(ts, [25, 75])
            result["throughput"][b] = {"images_per_s": int(b) / median, "latency_ms": median * 1e3,
                                       "latency_ms_iqr": float(q75 - q25) * 1e3, "times_s": ts}
        result.update(warmup=int(args.warmup), repeats=int(args.repeats), timing="interleaved",
                      interleaved_with=[str(d) for d in timed_dirs], timed_as=str(timed_dirs[i]))
        atomic_write_json(model_dir / "efficiency.json", result)
        timed_str = ", ".join(
            f"bs{b}: {t['images_per_s']:.0f} img/s {t['latency_ms']:.2f} ms" for b, t in result["throughput"].items()
        )
        print(
            f"{model_dir}: forward {result['params_forward']:,} params, stored {result['params_stored']:,}, "
            f"{result['flops_per_image'] / 1e6:.2f} MFLOPs/image, {timed_str}",
            flush=True,
        )
