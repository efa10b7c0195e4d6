"""FractalDB-style source data for pretraining the embedded backbone.

After Kataoka et al., "Pre-training without Natural Images" (ACCV 2020): a class is a random
iterated function system (IFS) of affine maps with parameters uniform in [-1, 1] and map
probabilities proportional to |det|, kept only if its attractor fills enough of the image
(FractalDB's filling-rate test); points come from the chaos game. A class is a family, not one
picture: as in FractalDB each instance scales one of the six affine parameters (a..f) of every map
by a weight, and is then flipped, rescaled, shifted and coloured at random.

Deviations from FractalDB, for 32x32 images made in seconds: 2-4 maps (FractalDB: 2-7); every map
must be a contraction (largest singular value < 1), which makes the chaos game stable without a
burn-in check; the filling rate is measured at 32x32; continuous weights in [0.6, 1.4] instead of
the grid {0.2, 0.6, ..., 1.8}; points drawn as pixels, not FractalDB's random 3x3 patches.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from petlprune.data.writer import write_split_folder

__all__ = [
    "IFS",
    "sample_class_systems",
    "chaos_game",
    "filling_rate",
    "render_fractals",
    "generate_source",
]

MIN_MAPS, MAX_MAPS = 2, 4
MIN_FILL = 0.2  # FractalDB's default filling-rate threshold
WEIGHT_RANGE = (0.6, 1.4)
_CHECK_SIZE = 32  # grid of the filling-rate test, independent of the output size
_SS = 2  # supersampling of the point renderer


class IFS:
    """An iterated function system padded to ``MAX_MAPS`` maps (unused maps have probability 0).

    Args:
        maps: (K, 2, 3) affine maps ``x -> A x + b`` stored as ``[A | b]``.
        probs: (K,) selection probabilities.
    """

    def __init__(self, maps: np.ndarray, probs: np.ndarray) -> None:
        self.maps = np.asarray(maps, np.float64)
        self.probs = np.asarray(probs, np.float64)

    @property
    def num_maps(self) -> int:
        return int((self.probs > 0).sum())

    def to_list(self) -> list[list[float]]:
        """FractalDB's csv layout: one row ``a, b, c, d, e, f, p`` per map in use."""
        rows = []
        for m, p in zip(self.maps, self.probs, strict=True):
            if p > 0:
                (a, b, e), (c, d, f) = m
                rows.append([float(v) for v in (a, b, c, d, e, f, p)])
        return rows


def _random_systems(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random systems as in FractalDB's search: (n, MAX_MAPS, 2, 3) maps, (n, MAX_MAPS) probs."""
    k = rng.integers(MIN_MAPS, MAX_MAPS + 1, n)
    maps = rng.uniform(-1.0, 1.0, (n, MAX_MAPS, 2, 3))
    used = np.arange(MAX_MAPS)[None, :] < k[:, None]  # (n, K)
    det = np.abs(np.linalg.det(maps[..., :2]))
    probs = np.where(used, det, 0.0)
    probs /= np.maximum(probs.sum(1, keepdims=True), 1e-12)
    return maps, probs


def _contractive(maps: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(n,) True where every map in use has largest singular value < 1."""
    sigma = np.linalg.svd(maps[..., :2], compute_uv=False)[..., 0]  # (n, K)
    return np.all((sigma < 1.0) | (probs == 0), axis=1) & np.all(probs[:, :1] > 0, axis=1)


def chaos_game(
    maps: np.ndarray, probs: np.ndarray, rng: np.random.Generator, *, chains: int = 96, steps: int = 48
) -> np.ndarray:
    """Points on the attractors of a batch of systems, by the chaos game run in parallel chains.

    Every chain starts at the fixed point of the system's first map, which lies on the attractor,
    so every visited point is on it and no burn-in is needed.

    Args:
        maps: (B, K, 2, 3) affine maps.
        probs: (B, K) map probabilities.
        rng: random generator.
        chains: independent chains per system.
        steps: steps per chain.

    Returns:
        (B, chains * steps, 2) float32 points (a view of coordinate-major memory).
    """
    b = len(maps)
    a0, t0 = maps[:, 0, :, :2], maps[:, 0, :, 2]
    start = np.linalg.solve(np.eye(2)[None] - a0, t0[..., None])[..., 0]  # (B, 2) fixed point of map 0
    x = np.repeat(start[:, :1], chains, axis=1).astype(np.float32)  # (B, M)
    y = np.repeat(start[:, 1:], chains, axis=1).astype(np.float32)
    # the six parameters as (B, K) tables, gathered per point with take_along_axis
    pa, pb, pe, pc, pd, pf = (maps[..., i, j].astype(np.float32) for i in range(2) for j in range(3))
    cum = np.cumsum(probs, axis=1)[:, :-1].astype(np.float32)  # (B, K-1) bin edges
    out = np.empty((b, 2, steps, chains), np.float32)  # coordinate-major: fast per-cloud reductions
    for t in range(steps):
        u = rng.random((b, chains), dtype=np.float32)
        idx = np.zeros((b, chains), np.int64)
        for k in range(cum.shape[1]):
            idx += u >= cum[:, k : k + 1]
        g = [np.take_along_axis(p, idx, axis=1) for p in (pa, pb, pe, pc, pd, pf)]
        x, y = g[0] * x + g[1] * y + g[2], g[3] * x + g[4] * y + g[5]
        out[:, 0, t], out[:, 1, t] = x, y
    return out.reshape(b, 2, steps * chains).transpose(0, 2, 1)


def _normalise(points: np.ndarray) -> np.ndarray:
    """Fit each point cloud's bounding box to [0, 1]^2, per axis as FractalDB's renderer does."""
    lo, hi = points.min(1, keepdims=True), points.max(1, keepdims=True)
    return (points - lo) / np.maximum(hi - lo, 1e-9)


def _occupancy(unit_points: np.ndarray, size: int) -> np.ndarray:
    """(B, size, size) bool: which pixels of [0, 1]^2 hold at least one point."""
    b, p, _ = unit_points.shape
    ij = np.clip((unit_points * size).astype(np.int64), 0, size - 1)
    flat = (np.arange(b)[:, None] * size * size + ij[..., 1] * size + ij[..., 0]).ravel()
    return (np.bincount(flat, minlength=b * size * size) > 0).reshape(b, size, size)


def filling_rate(maps: np.ndarray, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B,) fraction of a 32x32 image covered by each system's attractor (FractalDB's test)."""
    points = chaos_game(maps, probs, rng)
    return _occupancy(_normalise(points), _CHECK_SIZE).mean(axis=(1, 2))


def sample_class_systems(rng: np.random.Generator, classes: int, *, min_fill: float = MIN_FILL) -> list[IFS]:
    """Draw random systems until ``classes`` of them are contractive and fill at least ``min_fill``."""
    found: list[IFS] = []
    for _ in range(10_000):
        maps, probs = _random_systems(rng, 256)
        ok = _contractive(maps, probs)
        maps, probs = maps[ok], probs[ok]
        if len(maps):
            keep = filling_rate(maps, probs, rng) >= min_fill
            found.extend(IFS(m, p) for m, p in zip(maps[keep], probs[keep], strict=True))
        if len(found) >= classes:
            return found[:classes]
    raise RuntimeError(f"found only {len(found)} fractal classes with filling rate >= {min_fill}")


def _perturbed(
    systems: list[IFS], labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """FractalDB's intra-class variation: one of the six parameters of every map times a weight.

    A draw that would break contractivity is redrawn (at most 20 times, then weight 1).
    """
    n = len(labels)
    maps = np.stack([systems[c].maps for c in labels])  # (n, K, 2, 3)
    probs = np.stack([systems[c].probs for c in labels])
    flat_maps = maps.reshape(n, -1, 6)  # (n, K, 6): a, b, e, c, d, f
    todo = np.ones(n, bool)
    for _ in range(20):
        if not todo.any():
            break
        idx = np.flatnonzero(todo)
        param = rng.integers(0, 6, len(idx))
        weight = rng.uniform(*WEIGHT_RANGE, len(idx))
        trial = flat_maps[idx].copy()
        trial[np.arange(len(idx)), :, param] *= weight[:, None]
        trial = trial.reshape(-1, maps.shape[1], 2, 3)
        good = _contractive(trial, probs[idx])
        maps[idx[good]] = trial[good]
        todo[idx[good]] = False
    return maps, probs


def render_fractals(points: np.ndarray, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Draw point clouds as coloured fractals on black, with random flips, scale and shift.

    Args:
        points: (B, P, 2) raw chaos-game points.
        rng: random generator (augmentation and colour).
        image_size: output side.

    Returns:
        (B, image_size, image_size, 3) uint8 images.
    """
    from matplotlib.colors import hsv_to_rgb

    b = len(points)
    unit = _normalise(points)  # (B, P, 2) in [0, 1]
    flip = rng.random((b, 1, 2)) < 0.5
    unit = np.where(flip, 1.0 - unit, unit)
    scale = rng.uniform(0.7, 0.95, (b, 1, 1)).astype(np.float32)
    offset = rng.uniform(0, 1, (b, 1, 2)).astype(np.float32) * (1 - scale)
    unit = unit * scale + offset
    side = image_size * _SS
    occ = _occupancy(unit, side).astype(np.float32)  # (B, S, S)
    cover = occ.reshape(b, image_size, _SS, image_size, _SS).mean(axis=(2, 4))  # anti-aliased coverage
    hsv = np.stack([rng.uniform(0, 1, b), rng.uniform(0.3, 1.0, b), rng.uniform(0.7, 1.0, b)], axis=-1)
    colour = hsv_to_rgb(hsv).astype(np.float32)  # (B, 3)
    img = cover[..., None] * colour[:, None, None, :]
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def generate_source(
    out_dir: str | os.PathLike,
    *,
    seed: int,
    classes: int,
    train_per_class: int,
    test_per_class: int,
    image_size: int,
    chunk: int = 512,
) -> dict[str, Any]:
    """Generate the fractal source data set (splits ``train`` and ``test``) into ``out_dir``.

    Args:
        out_dir: destination folder (replaced atomically).
        seed: same seed -> identical classes, images and list files.
        classes: number of fractal classes.
        train_per_class, test_per_class: images per class in each split.
        image_size: side of the square images.
        chunk: images rendered at once (memory bound).

    Returns:
        The meta dict; ``meta["ifs"]`` holds every class's system in FractalDB's csv layout.
    """
    if classes < 2 or train_per_class < 1 or test_per_class < 1:
        raise ValueError(
            f"classes={classes}, train_per_class={train_per_class}, test_per_class={test_per_class}: "
            "need >= 2 classes and >= 1 image per class and split"
        )
    rng = np.random.default_rng([int(seed), zlib.crc32(b"fractal")])
    systems = sample_class_systems(rng, classes)
    per_class = train_per_class + test_per_class
    # class-major order, then shuffled within each split so list files are not sorted by class
    labels = np.repeat(np.arange(classes), per_class)
    is_train = np.tile(np.arange(per_class) < train_per_class, classes)
    images = np.empty((len(labels), image_size, image_size, 3), np.uint8)
    for start in range(0, len(labels), chunk):
        sl = slice(start, min(len(labels), start + chunk))
        maps, probs = _perturbed(systems, labels[sl], rng)
        images[sl] = render_fractals(chaos_game(maps, probs, rng), rng, image_size)
    splits = {
        "train": rng.permutation(np.flatnonzero(is_train)),
        "test": rng.permutation(np.flatnonzero(~is_train)),
    }
    meta_extra = {
        "name": Path(out_dir).name,
        "seed": int(seed),
        "kind": "source",
        "description": (
            f"FractalDB-style source data: {classes} random IFS classes (2-4 contractive affine maps, "
            f"filling rate >= {MIN_FILL} at 32x32), chaos-game points; per image one affine parameter "
            f"of every map scaled by a weight in {list(WEIGHT_RANGE)}, random flips, scale, shift and colour."
        ),
        "ifs": [s.to_list() for s in systems],
    }
    return write_split_folder(
        out_dir, images, labels, splits, [f"fractal{c:04d}" for c in range(classes)], meta_extra
    )
