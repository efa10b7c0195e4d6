"""The split rules: which list files of a task a stage trains, scores and evaluates on.

Protocol (VTAB-1k without selecting on test): a study run trains on train800val200 and evaluates test
once; a hyper-parameter search (``--val``) trains on train800 and evaluates val200, and everything it
scores or re-trains must never have seen val200. Stages read these rules here instead of importing
each other (stages/finetune.py, stages/prune.py, stages/score.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["SCORING_SPLIT", "splits_for", "scoring_split", "require_train_split"]

SCORING_SPLIT = "train800val200"  # scorers see the training images only, never test


def splits_for(val: bool) -> tuple[str, str]:
    """(train split, evaluation split): hyper-parameter search never sees test."""
    return ("train800", "val200") if val else ("train800val200", "test")


def scoring_split(val: bool) -> str:
    """The split a scorer reads: the training split of the same mode."""
    return "train800" if val else SCORING_SPLIT


def require_train_split(model: Path, info: dict[str, Any], train_split: str, stage: str) -> None:
    """In --val mode the model must have been fine-tuned on train800 only: one trained on
    train800val200 has seen val200, and a selection on it would be a selection on training images."""
    if train_split == "train800" and info.get("train_split") != "train800":
        raise SystemExit(
            f"petlprune {stage} --val: {model} was fine-tuned on {info.get('train_split') or 'an unrecorded split'}, "
            "not train800, so it has seen val200; fine-tune with `petlprune finetune --val` first"
        )
