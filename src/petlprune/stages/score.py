"""``petlprune score``: score blocks / adapters / channels of a fine-tuned model with one method.

The scoring context holds the fine-tuned model (on the chosen device) plus only what the method's
``needs`` asks for: the block features (``features.npz``) and/or a loader over train800val200,
shuffled with the run's seed (so the "first batches" a gradient criterion reads are a fixed,
class-mixed sample). Writes ``score/{method}.json`` (and a ``.npz`` sidecar when the method saves
arrays, e.g. SLS's t-SNE maps). ``seconds`` in the scores (and so a Plan's ``decision_seconds``)
includes the features pass for the methods that read ``features.npz``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from petlprune.core.splits import SCORING_SPLIT, require_train_split
from petlprune.stages._args import json_object, positive_int

__all__ = ["add_arguments", "run", "SCORING_SPLIT"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="registered method name (petlprune.methods.available())")
    parser.add_argument("--model", type=Path, required=True, help="task model (RUN_DIR/finetune/model.pt)")
    parser.add_argument("--backbone", type=Path, required=True, help="the backbone file the task was trained on")
    parser.add_argument("--data", type=Path, required=True, help="task folder in the VTAB-1k layout")
    parser.add_argument("--features", type=Path, required=True, help="RUN_DIR/features.npz (read if the method needs it)")
    parser.add_argument("--options", type=json_object, default={}, help="the method's options as a JSON object")
    parser.add_argument("--seed", type=int, required=True, help="run seed (random draws, t-SNE, loader order)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, required=True, help="scores file to write (RUN_DIR/score/NAME.json)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="loader batch size (gradient methods)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--val", action="store_true",
                        help="score on train800 only, for a model fine-tuned with --val (choices made on val200)")


def run(args: argparse.Namespace) -> None:
    from petlprune.methods import get

    method = get(args.method)
    if not getattr(method, "needs_model", True):
        _run_without_model(args, method)
        return
    from petlprune.analysis.features import load_features
    from petlprune.data.vtab import make_loader
    from petlprune.methods import ScoringContext
    from petlprune.models.build import load_task_model
    from petlprune.stages._data import task_dataset
    from petlprune.train import select_device, set_determinism

    set_determinism(args.seed, args.threads)
    device = select_device(args.device)
    model, info = load_task_model(args.model, args.backbone)
    split = "train800" if args.val else SCORING_SPLIT
    require_train_split(args.model, info, split, "score")
    if info.get("plan") is not None:
        raise SystemExit(f"petlprune score: {args.model} is already pruned (plan {info['plan'].get('method')}); "
                         "score the fine-tuned model")
    model.to(device).eval()
    features = labels = loader = None
    if "features" in method.needs:
        features = load_features(args.features)
        if args.val and features.get("split", "train800") != "train800":
            # A choice made on val200 must not read val200 images (SLS's t-SNE, SGLP's CKA, angular).
            raise SystemExit(f"petlprune score --val: {args.features} ran over {features['split']}, which "
                             "holds val200; run `petlprune features --split train800` for a validation choice")
        labels = features["labels"]
        if features["cls"].shape[0] != len(model.blocks):
            raise SystemExit(f"petlprune score: {args.features} has {features['cls'].shape[0]} blocks, "
                             f"the model {len(model.blocks)}")
    if "loader" in method.needs:
        loader = make_loader(task_dataset(args.data, split, info), args.batch_size, shuffle=True, seed=args.seed)
    print(f"score: {args.method} on {args.model} (needs: {', '.join(sorted(method.needs)) or 'model only'}; "
          f"options {args.options}; device {device})", flush=True)
    t0 = time.perf_counter()
    ctx = ScoringContext(model=model, features=features, labels=labels, loader=loader, device=str(device),
                         seed=args.seed, options=args.options, threads=args.threads)
    scores = method.score(ctx)
    if features is not None and "seconds" in features:
        # The forward pass is part of what a feature method costs to decide, as it is for the
        # methods that run their own pass inside score().
        scores.extra["features_seconds"] = features["seconds"]
        scores.seconds += features["seconds"]
    _finish(args, scores, t0)


def _run_without_model(args: argparse.Namespace, method) -> None:
    """Score a method whose scores depend on the depth alone (last_k, random): the depth comes from the
    fine-tune's ``metrics.json``, so the job neither imports torch nor builds the model (the DAG runs
    one such job per run and control, and building the model was all of their time)."""
    import json

    from petlprune.methods import ScoringContext

    metrics_path = args.model.parent / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"petlprune score: cannot read the fine-tune's {metrics_path} ({exc}); "
                         f"method {args.method!r} takes the model's depth from it") from None
    depth = metrics.get("depth")
    if not isinstance(depth, int) or depth < 1:
        raise SystemExit(f"petlprune score: {metrics_path} has no valid 'depth' (got {depth!r})")
    if metrics.get("method") is not None:
        raise SystemExit(f"petlprune score: {args.model} is already pruned (plan {metrics['method']}); "
                         "score the fine-tuned model")
    require_train_split(args.model, metrics, "train800" if args.val else SCORING_SPLIT, "score")
    print(f"score: {args.method} on {args.model} (needs: the depth, {depth} blocks, from {metrics_path}; "
          f"options {args.options})", flush=True)
    t0 = time.perf_counter()
    ctx = ScoringContext(model=None, seed=args.seed, options=args.options, threads=args.threads, num_blocks=depth)
    _finish(args, method.score(ctx), t0)


def _finish(args: argparse.Namespace, scores, t0: float) -> None:
    scores.save(args.out)
    shown = ", ".join("-" if v is None else f"{v:.4g}" for v in scores.values[:24])
    more = f", ... ({len(scores.values)} in all)" if len(scores.values) > 24 else ""
    print(f"score: wrote {args.out} in {time.perf_counter() - t0:.1f}s: [{shown}{more}]", flush=True)
