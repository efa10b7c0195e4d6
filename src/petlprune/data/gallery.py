"""A gallery figure: one row per task (or source folder), samples of several classes, named."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from petlprune.data.vtab import DatasetError, load_meta, read_list_file

__all__ = ["save_gallery", "pick_samples", "GALLERY_SPLITS"]

# the first list file found is shown: a task's training images, else a source folder's
GALLERY_SPLITS = ("train800", "train800val200", "train", "test")


def pick_samples(
    task_dir: str | os.PathLike, *, classes_per_row: int, per_class: int
) -> list[tuple[Path, int]]:
    """``(image path, label)`` for up to ``classes_per_row`` classes spread over the label range.

    Within a class the first ``per_class`` images of the list file are taken, so the figure is
    deterministic.
    """
    root = Path(task_dir)
    split = next((s for s in GALLERY_SPLITS if (root / f"{s}.txt").is_file()), None)
    if split is None:
        raise DatasetError(f"{root}: no list file among {[f'{s}.txt' for s in GALLERY_SPLITS]}")
    entries = read_list_file(root / f"{split}.txt")
    present = sorted({label for _, label, _ in entries})
    if len(present) > classes_per_row:
        pick = np.linspace(0, len(present) - 1, classes_per_row).round().astype(int)
        present = [present[i] for i in pick]
    chosen: list[tuple[Path, int]] = []
    for label in present:
        rel = [r for r, lab, _ in entries if lab == label][:per_class]
        chosen.extend((root / r, label) for r in rel)
    return chosen


def save_gallery(
    task_dirs: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    *,
    per_class: int = 1,
    classes_per_row: int = 8,
    dpi: int = 120,
) -> Path:
    """Draw one row per folder: ``per_class`` samples of up to ``classes_per_row`` classes.

    Args:
        task_dirs: VTAB-1k-layout folders (tasks or the fractal source).
        out_png: output PNG, written atomically.
        per_class: samples per shown class.
        classes_per_row: classes shown per folder (spread over the label range).
        dpi: figure resolution.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from petlprune.io import atomic_path

    if not task_dirs:
        raise ValueError("save_gallery: no task folder given")
    rows = []
    for d in task_dirs:
        meta = load_meta(d)
        names = meta.get("classes")
        samples = pick_samples(d, classes_per_row=classes_per_row, per_class=per_class)
        rows.append((meta.get("name", Path(d).name), names, samples))
    ncols = max(len(s) for _, _, s in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.1 * ncols + 1.2, 1.25 * len(rows)), squeeze=False)
    for r, (task, names, samples) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(samples):
                ax.axis("off")
                continue
            path, label = samples[c]
            with Image.open(path) as img:
                ax.imshow(np.asarray(img.convert("RGB")), interpolation="nearest")
            name = names[label] if names and label < len(names) else str(label)
            ax.set_title(name, fontsize=6, pad=2)
        axes[r, 0].set_ylabel(task, fontsize=8, rotation=0, ha="right", va="center")
    # fixed margins: tight_layout costs seconds with a hundred axes
    fig.subplots_adjust(
        left=1.1 / fig.get_figwidth(), right=0.995, bottom=0.01, top=0.95, wspace=0.08, hspace=0.35
    )
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return out_png
