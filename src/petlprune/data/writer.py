"""Atomic writer of a VTAB-1k-layout folder: ``images/``, one list file per split, ``meta.json``.

The layout is the one of the VTAB-1k lists distributed with NOAH (``{split}.txt`` with lines
``relative/path label``), so the embedded tasks and the real benchmark are read by the same loader.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from petlprune.io import atomic_write_json

__all__ = ["write_split_folder", "replace_dir", "sha256_file", "png_bytes", "REQUIRED_META"]

# Keys the caller must give in ``meta_extra``: they describe where the data came from.
REQUIRED_META = ("seed", "kind", "description")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def png_bytes(image: np.ndarray) -> bytes:
    """Encode one (H, W, 3) uint8 image as PNG with no metadata, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _check_inputs(
    images: np.ndarray, labels: np.ndarray, splits: Mapping[str, np.ndarray], classes: Sequence[str]
) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected a (N, H, W, 3) uint8 array, got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels: expected shape ({len(images)},), got {labels.shape}")
    if not classes:
        raise ValueError("classes: empty")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(
            f"labels: values in [{labels.min()}, {labels.max()}] outside [0, {len(classes)}) "
            f"({len(classes)} classes)"
        )
    if not splits:
        raise ValueError("splits: empty")
    for name, idx in splits.items():
        if not name or any(c in name for c in "/\\ ") or name.startswith("."):
            raise ValueError(f"splits: bad split name {name!r}")
        if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= len(images))):
            raise ValueError(f"splits[{name!r}]: indices must be a 1-D array within [0, {len(images)})")


def write_split_folder(
    out_dir: str | os.PathLike,
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    splits: Mapping[str, Sequence[int] | np.ndarray],
    classes: Sequence[str],
    meta_extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a VTAB-1k-layout folder atomically and return its ``meta.json`` content.

    The folder is built in a temporary sibling and renamed into place, so a killed job never leaves
    a half-written folder that looks complete; an existing ``out_dir`` is replaced.

    Args:
        out_dir: destination folder.
        images: (N, H, W, 3) uint8; image ``i`` is written as ``images/{i:05d}.png`` if any split uses it.
        labels: (N,) integer labels in [0, len(classes)).
        splits: split name -> indices into ``images``, in list-file order (``{split}.txt``).
        classes: class names, index = label.
        meta_extra: merged into meta.json; must hold ``seed``, ``kind`` and ``description``
            (``name`` defaults to the folder name).

    Besides the contract's keys, meta.json holds ``pixels_sha256``: sha256 of the written images'
    raw (H, W, 3) uint8 pixels in index order.

    Returns:
        The meta dict written to ``meta.json``.
    """
    out_dir = Path(out_dir)
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    split_idx = {name: np.asarray(idx, dtype=np.int64) for name, idx in splits.items()}
    _check_inputs(images, labels, split_idx, classes)
    missing = [k for k in REQUIRED_META if k not in meta_extra]
    if missing:
        raise ValueError(f"meta_extra: missing key(s) {missing} (required: {list(REQUIRED_META)})")

    height, width = images.shape[1:3]
    digits = max(5, len(str(len(images) - 1)))
    used = np.unique(np.concatenate(list(split_idx.values())))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        for i in used:
            (tmp / "images" / f"{i:0{digits}d}.png").write_bytes(png_bytes(images[i]))
        sha, counts = {}, {}
        for name, idx in split_idx.items():
            lines = "".join(f"images/{i:0{digits}d}.png {labels[i]}\n" for i in idx)
            list_file = tmp / f"{name}.txt"
            list_file.write_text(lines)
            sha[list_file.name] = sha256_file(list_file)
            counts[name] = len(idx)
        meta: dict[str, Any] = {
            "name": out_dir.name,
            "classes": [str(c) for c in classes],
            "num_classes": len(classes),
            "counts": counts,
            "sha256": sha,
            "image_size": int(height) if height == width else [int(height), int(width)],
            # of the decoded pixels (written images, in index order): unlike PNG bytes, independent
            # of the zlib build, so two machines can compare data sets
            "pixels_sha256": hashlib.sha256(np.ascontiguousarray(images[used]).tobytes()).hexdigest(),
        }
        meta.update(meta_extra)
        atomic_write_json(tmp / "meta.json", meta)
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return meta


def replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst``; an existing ``dst`` is moved aside first and then deleted."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        old.rmdir()
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
