"""``petlprune prune``: apply a Plan to a fine-tuned model, evaluate, re-train, evaluate.

The re-training is the fine-tuning recipe itself (same trainer, same ``--train`` config): the PETL
modules of the kept blocks + the head are trained, the backbone stays frozen. Accuracy is reported
right after pruning (``top1_before_retrain``, it can collapse) and after the LAST re-training epoch
(``top1``). With ``--val`` the split pair is train800 → val200, as in ``finetune --val``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from petlprune.core.splits import require_train_split, splits_for
from petlprune.stages._args import json_object, positive_int

__all__ = ["add_arguments", "run", "require_train_split"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="fine-tuned task model (RUN_DIR/finetune/model.pt)")
    parser.add_argument("--backbone", type=Path, required=True, help="the backbone file the task was trained on")
    parser.add_argument("--plan", type=Path, required=True, help="RUN_DIR/plan/NAME-BUDGET.json")
    parser.add_argument("--data", type=Path, required=True, help="task folder in the VTAB-1k layout")
    parser.add_argument("--train", type=json_object, required=True,
                        help="TrainConfig as a JSON object: the fine-tuning recipe, re-used for re-training")
    parser.add_argument("--seed", type=int, required=True, help="seed of data order and dropout")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, required=True, help="output folder (RUN_DIR/pruned/NAME-BUDGET)")
    parser.add_argument("--val", action="store_true",
                        help="re-train on train800, evaluate on val200 (hyper-parameter search; never selects on test)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--no-reuse", action="store_true",
                        help="re-train even if a sibling in the same run re-trained the identical model")


def run(args: argparse.Namespace) -> None:
    from petlprune.data.vtab import load_meta, make_loader
    from petlprune.methods import Plan, get
    from petlprune.models.build import load_task_model
    from petlprune.models.petl import mark_trainable
    from petlprune.stages._data import task_dataset
    from petlprune.stages._retrain_reuse import find_retrained, fingerprint, retrain_lock
    from petlprune.train import TrainConfig, evaluate, fit, select_device, set_determinism

    t0 = time.perf_counter()
    cfg = TrainConfig.from_dict(args.train, source="--train")
    train_split, eval_split = splits_for(args.val)
    set_determinism(args.seed, args.threads)
    device = select_device(args.device)
    plan = Plan.load(args.plan)
    model, info = load_task_model(args.model, args.backbone)
    if info.get("plan") is not None:
        raise SystemExit(f"petlprune prune: {args.model} is already pruned; give the fine-tuned model")
    require_train_split(args.model, info, train_split, "prune")
    depth_before = len(model.blocks)
    method = get(plan.method)
    # A method that fits something on the unpruned model before pruning (TOAST's linear bridge,
    # methods/base.py LayerPruningMethod.calibrate) returns what completes the pruned model.
    calibrate = getattr(method, "calibrate", None)
    finish = calibrate(model, plan, lambda: task_dataset(args.data, train_split, info), device) if calibrate else None
    model = method.apply(model, plan)
    if finish is not None:
        finish(model)
    # Default: the kept blocks' PETL modules + head, backbone frozen. A method that trains more
    # (fine_pruning trains the masked backbone) says so with its own ``mark_trainable``.
    getattr(method, "mark_trainable", lambda m, petl: mark_trainable(m, petl))(model, info["petl"])

    def teacher():
        """The unpruned fine-tuned model, frozen, for methods that distil from it (never stored)."""
        t, _ = load_task_model(args.model, args.backbone)
        t.requires_grad_(False)
        return t.to(device).eval()

    # A method may replace cross-entropy during re-training (Pear's kc-distill): ``retrain_loss(plan,
    # teacher)`` returns ``loss_fn(logits, y, x)`` or None; ``teacher`` is only called if needed.
    loss_fn = getattr(method, "retrain_loss", lambda plan, teacher: None)(plan, teacher)
    # The recipe is shared; a method that trains backbone weights may lower its lr (``retrain_config``).
    cfg = getattr(method, "retrain_config", lambda cfg, plan: cfg)(cfg, plan)

    train_ds, eval_ds = task_dataset(args.data, train_split, info), task_dataset(args.data, eval_split, info)
    eval_loader = make_loader(eval_ds, 256, shuffle=False, seed=args.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"prune: {plan.method} {plan.budget}: {depth_before} -> {len(model.blocks)} blocks {plan.kept_blocks}, "
          f"{trainable:,} trainable params; {train_split}: {len(train_ds)}, {eval_split}: {len(eval_ds)}, "
          f"device {device}", flush=True)
    # A method's own loss is invisible to the fingerprint: such a re-training is never reused.
    fp = None if loss_fn is not None or args.no_reuse else fingerprint(model, {
        "train": cfg.to_dict(), "seed": args.seed, "threads": args.threads, "device": str(device),
        "data": load_meta(args.data), "splits": [train_split, eval_split], "info": info})
    with retrain_lock(args.out, fp):
        source = find_retrained(args.out, fp) if fp else None
        if source is not None:
            before, after, history = reuse_retraining(source, model)
            print(f"prune: the same model, recipe and data as {source.name}, re-trained there: its task weights "
                  f"and evaluations are reused (petlprune prune --no-reuse re-trains)", flush=True)
        else:
            before = evaluate(model, eval_loader, device, cfg.precision)
            print(f"prune: {eval_split} top1 before re-training {before['top1']:.4f}", flush=True)
            history = fit(model, make_loader(train_ds, cfg.batch_size, shuffle=True, seed=args.seed), cfg,
                          device=device, seed=args.seed, loss_fn=loss_fn, log=lambda s: print(s, flush=True))
            after = evaluate(model, eval_loader, device, cfg.precision)
        print(f"prune: {eval_split} top1 after re-training {after['top1']:.4f} (n={after['n']})", flush=True)
        _write(args, model, info, plan, cfg, (before, after, history), depth_before=depth_before,
               trainable=trainable, splits=(train_split, eval_split), device=device, t0=t0, fp=fp, source=source)


def reuse_retraining(source: Path, model) -> tuple[dict, dict, list]:
    """Load ``source``'s re-trained task weights into ``model`` (the same structure: the fingerprint
    says so); return its (before, after, history) evaluations as :func:`petlprune.train.evaluate` would."""
    import json

    import numpy as np

    from petlprune.io import load_checkpoint
    from petlprune.models.build import load_task_state_dict

    load_task_state_dict(model, load_checkpoint(source / "model.pt")["state_dict"], source=str(source / "model.pt"))
    metrics = json.loads((source / "metrics.json").read_text())
    with np.load(source / "predictions.npz") as pred:
        labels, after_pred, before_pred = pred["labels"], pred["pred"], pred["pred_before_retrain"]
    n = int(metrics["n_eval"])
    before = {"top1": metrics["top1_before_retrain"], "loss": metrics["eval_loss_before_retrain"], "n": n,
              "labels": labels, "pred": before_pred}
    after = {"top1": metrics["top1"], "loss": metrics["eval_loss"], "n": n, "labels": labels, "pred": after_pred}
    return before, after, metrics["history"]


def _write(args, model, info, plan, cfg, evaluations, *, depth_before, trainable, splits, device, t0, fp,
           source) -> None:
    """Save the re-trained model, its predictions and metrics.json (last: its presence means done)."""
    from petlprune.data.vtab import load_meta
    from petlprune.io import atomic_write_json, provenance
    from petlprune.models.build import save_task_model
    from petlprune.train import peak_memory_mb, save_predictions

    before, after, history = evaluations
    train_split, eval_split = splits
    model = model.cpu()
    save_task_model(args.out / "model.pt", model, backbone=args.backbone, petl=info["petl"],
                    petl_options=info["petl_options"], num_classes=info["num_classes"], plan=plan,
                    train_split=train_split)
    meta = load_meta(args.data)
    metrics = {
        "task": meta.get("name", args.data.name),
        "petl": info["petl"],
        "petl_options": info["petl_options"],
        "seed": args.seed,
        "method": plan.method,
        "budget": plan.budget,
        "top1": after["top1"],
        "top1_before_retrain": before["top1"],
        "eval_loss": after["loss"],
        "eval_loss_before_retrain": before["loss"],
        "n_eval": after["n"],
        "eval_split": eval_split,
        "train_split": train_split,
        "depth": len(model.blocks),
        "depth_before": depth_before,
        "kept_blocks": plan.kept_blocks,
        "decision_seconds": plan.decision_seconds,
        "num_classes": info["num_classes"],
        "params_trainable": trainable,
        "train": cfg.to_dict(),
        "history": history,
        "provenance": provenance(
            device=str(device), seed=args.seed, wall_seconds=time.perf_counter() - t0,
            peak_memory_mb=peak_memory_mb(device), threads=args.threads, argv=getattr(args, "argv", None),
            backbone=str(args.backbone), data=str(args.data), model=str(args.model), plan=str(args.plan),
            # how the numbers were obtained: which sibling's identical re-training they are, if any
            retrain_fingerprint=fp, retrain_reused_from=None if source is None else source.name,
        ),
    }
    save_predictions(args.out / "predictions.npz", eval_split, pred=after, before_retrain=before)
    atomic_write_json(args.out / "metrics.json", metrics)  # written last: its presence means the run finished
