"""How hard is a task? A logistic-regression probe on raw pixels.

A task where this probe is at chance may be unlearnable from 1000 images; one where it is near 100%
is too easy to separate pruning methods. The embedded suite is tuned to sit in between.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from petlprune.data.vtab import VTABDataset, load_meta

__all__ = ["raw_pixel_probe", "load_pixels"]


def load_pixels(
    root: str | os.PathLike, split: str, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels of a split as ``(X (n, H*W*3) float32 in [0, 1], y (n,) int64)``.

    Args:
        root: task folder.
        split: list-file stem.
        image_size: resize side; default the folder's ``image_size`` from meta.json, else 32.
    """
    if image_size is None:
        size = load_meta(root).get("image_size") or 32  # a registered VTAB-1k copy stores None
        image_size = size if isinstance(size, int) else max(size)
    ds = VTABDataset(root, split, image_size=image_size, mean=(0.0,) * 3, std=(1.0,) * 3, cache=False)
    x = ds.pixels().permute(0, 2, 3, 1).reshape(len(ds), -1).numpy().astype(np.float32) / 255.0
    return x, np.asarray(ds.labels, dtype=np.int64)


def raw_pixel_probe(
    task_dir: str | os.PathLike,
    *,
    train_split: str | None = None,
    test_split: str = "test",
    max_iter: int = 1000,
    seed: int = 0,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Standardised raw pixels -> multinomial logistic regression, train800val200 -> test.

    Args:
        task_dir: a VTAB-1k-layout folder.
        train_split: default ``train800val200`` (or ``train`` for a source folder without it).
        test_split: evaluation split.
        max_iter: lbfgs iterations.
        seed: the solver's random_state (lbfgs is deterministic; kept for completeness).
        threads: BLAS/OpenMP threads for the fit (None: library default). One is fastest at this
            size and avoids oversubscription when jobs run side by side.

    Returns:
        ``{"task", "num_classes", "chance", "probe_top1", "n_train", "n_test", "seconds"}``; chance is
        the majority-class rate on the test split.
    """
    task_dir = Path(task_dir)
    if train_split is None:
        train_split = "train800val200" if (task_dir / "train800val200.txt").is_file() else "train"
    start = time.perf_counter()
    x_train, y_train = load_pixels(task_dir, train_split)
    x_test, y_test = load_pixels(task_dir, test_split)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with threadpool_limits(limits=threads):
        clf.fit(x_train, y_train)
        top1 = float((clf.predict(x_test) == y_test).mean())
    meta = load_meta(task_dir)
    return {
        "task": meta.get("name", task_dir.name),
        "num_classes": int(meta.get("num_classes", max(y_train.max(), y_test.max()) + 1)),
        "chance": float(np.bincount(y_test).max() / len(y_test)),
        "probe_top1": top1,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "seconds": round(time.perf_counter() - start, 3),
    }
