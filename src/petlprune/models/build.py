"""The one place that builds models: backbone + PETL, task checkpoints saved and reloaded.

A task checkpoint (``finetune/model.pt``, ``pruned/.../model.pt``) holds only what a task stores: its
task weights (PETL modules + head; everything for ``full``) and its Plan. The frozen backbone comes from
the shared backbone file; a fingerprint of the frozen weights the task was trained on is checked at load
time, so a task is never silently reloaded onto a different backbone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from petlprune.io import atomic_torch_save, load_checkpoint
from petlprune.models.backbone import create_backbone, read_backbone, state_fingerprint
from petlprune.models.petl import (
    PETL_METHODS,
    inject_petl,
    load_task_state_dict,
    mark_trainable,
    task_state_dict,
)

__all__ = ["TASK_KEYS", "build_model", "save_task_model", "load_task_model", "frozen_fingerprint"]

TASK_KEYS = ("backbone", "petl", "petl_options", "num_classes", "plan", "state_dict")


def build_model(
    backbone_path: str | os.PathLike | None,
    *,
    petl: str,
    petl_options: dict[str, Any] | None = None,
    num_classes: int,
    spec: dict[str, Any] | None = None,
) -> nn.Module:
    """Backbone (+ fresh head) + PETL modules, with the task weights marked trainable.

    Args:
        backbone_path: our cached backbone file; None builds a randomly initialised backbone from ``spec``.
        petl: PETL method name (see ``petlprune.models.petl.PETL_METHODS``).
        petl_options: the method's options (None: defaults).
        num_classes: classes of the task.
        spec: ``{"timm_model": ..., "timm_kwargs": {...}}`` when ``backbone_path`` is None.

    Returns:
        The model, in train mode; ``model.pretrained_cfg`` holds the backbone's mean/std.
    """
    if petl not in PETL_METHODS:
        raise ValueError(f"unknown PETL method {petl!r}; known: {', '.join(PETL_METHODS)}")
    if backbone_path is None:
        if not spec or "timm_model" not in spec:
            raise ValueError("build_model: backbone_path=None needs spec={'timm_model': ..., 'timm_kwargs': {...}}")
        model = create_backbone(spec["timm_model"], spec.get("timm_kwargs", {}), num_classes=num_classes)
    else:
        meta = read_backbone(backbone_path)
        model = create_backbone(meta["timm_model"], meta["timm_kwargs"], num_classes=num_classes,
                                weights="file", checkpoint=backbone_path)
    inject_petl(model, petl, **(petl_options or {}))
    mark_trainable(model, petl)
    return model


def frozen_fingerprint(model: nn.Module) -> str:
    """Fingerprint of the weights a task does NOT store (the shared, frozen backbone it runs on)."""
    task = task_state_dict(model).keys()
    # named_* de-duplicate, so a shared task module appears once, under a name that is in ``task``.
    frozen = {k: v for k, v in [*model.named_parameters(), *model.named_buffers()] if k not in task}
    return state_fingerprint(frozen)


def save_task_model(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    backbone: str | os.PathLike | None,
    petl: str,
    petl_options: dict[str, Any] | None,
    num_classes: int,
    plan: Any = None,
    train_split: str | None = None,
) -> None:
    """Atomically store a task: its task weights, PETL config, plan and the frozen-weights fingerprint.

    Args:
        path: destination ``model.pt``.
        model: the trained model.
        backbone: the backbone file (its stem is stored as the backbone's name) or None.
        petl: PETL method name.
        petl_options: PETL options as given to :func:`build_model`.
        num_classes: classes of the task.
        plan: the pruning Plan (a ``methods.base.Plan`` or its dict) or None.
        train_split: the split the task weights were trained on (``train800`` in --val mode), so that a
            validation run can refuse a model that has seen val200.
    """
    if plan is not None and not isinstance(plan, dict):
        plan = plan.to_dict()
    atomic_torch_save(
        {
            "backbone": None if backbone is None else Path(backbone).stem,
            "petl": petl,
            "petl_options": dict(petl_options or {}),
            "num_classes": int(num_classes),
            "plan": plan,
            "state_dict": task_state_dict(model),
            "frozen_sha256": frozen_fingerprint(model),
            "train_split": train_split,
        },
        path,
    )


def load_task_model(
    path: str | os.PathLike,
    backbone_path: str | os.PathLike | None,
    *,
    spec: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a stored task: backbone + PETL, the Plan applied, the task weights loaded strictly.

    Args:
        path: a ``model.pt`` written by :func:`save_task_model`.
        backbone_path: the backbone file the task was trained on.
        spec: only for backbone_path=None (tests): the random backbone's spec; its weights must then
            match the fingerprint, i.e. come from the same seed.

    Returns:
        (model in eval mode with the task weights marked trainable, info): info holds the stored
        fields except the weights, plus the backbone's ``mean``, ``std`` and ``image_size``.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a task checkpoint (expected a dict with keys {', '.join(TASK_KEYS)})")
    missing = [k for k in TASK_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a task checkpoint: missing key(s) {', '.join(missing)}")
    model = build_model(backbone_path, petl=ckpt["petl"], petl_options=ckpt["petl_options"],
                        num_classes=ckpt["num_classes"], spec=spec)
    plan = ckpt["plan"]
    if plan is not None:
        from petlprune.methods import Plan, get  # lazy: methods import models

        model = get(plan["method"]).apply(model, Plan.from_dict(plan))
        mark_trainable(model, ckpt["petl"])
    want = ckpt.get("frozen_sha256")
    if want is not None and frozen_fingerprint(model) != want:
        raise ValueError(
            f"{path}: the backbone {backbone_path} is not the one this task was trained on "
            f"(frozen weights differ; stored backbone name: {ckpt['backbone']!r})"
        )
    load_task_state_dict(model, ckpt["state_dict"], source=str(path))
    model.eval()
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    cfg = model.pretrained_cfg
    info.update(mean=list(cfg["mean"]), std=list(cfg["std"]), image_size=int(model.patch_embed.img_size[0]))
    return model, info
