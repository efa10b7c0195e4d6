"""Task-folder helpers several stages share (as ``_args.py`` holds their argument types), so that no
stage module imports another; the split rules are in core/splits.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["num_classes_of", "task_dataset"]


def num_classes_of(data: Path, splits: tuple[str, ...]) -> int:
    """Classes of a task folder: ``meta.json``'s num_classes, else 1 + the largest label in ``splits``."""
    from petlprune.data.vtab import load_meta, read_list_file

    meta = load_meta(data)
    if meta.get("num_classes"):
        return int(meta["num_classes"])
    return 1 + max(label for split in splits for _, label, _ in read_list_file(data / f"{split}.txt"))


def task_dataset(data: Path, split: str, info: dict[str, Any]) -> Any:
    """One split of a task folder, preprocessed as the task model expects (``info`` of ``load_task_model``)."""
    from petlprune.data.vtab import VTABDataset

    return VTABDataset(data, split, image_size=info["image_size"], mean=info["mean"], std=info["std"],
                       num_classes=info["num_classes"], cache=True)
