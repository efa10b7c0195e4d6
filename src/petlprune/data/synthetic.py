"""The embedded VTAB-style task suite, generated deterministically from a seed.

Five small tasks stand in for the three VTAB-1k groups so the whole study runs on a laptop with no
downloads: ``digits`` (natural: real handwritten digits from sklearn), ``textures`` (specialized:
procedural texture families), ``clevr_count``, ``dsprites_loc`` and ``dsprites_ori`` (structured).
Every split keeps the VTAB-1k names (train800, val200, train800val200, test) whatever its size.

Scenes are drawn at ``_SS`` times the target resolution and box-filtered down, which is exact area
coverage (anti-aliasing) and keeps generation vectorised and byte-reproducible.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from petlprune.data.writer import write_split_folder

__all__ = ["Task", "TASKS", "DEFAULT_SIZES", "SPLIT_ORDER", "generate_task", "task_rng", "parse_sizes"]

SPLIT_ORDER = ("train800", "val200", "test")
DEFAULT_SIZES: dict[str, int] = {"train800": 800, "val200": 200, "test": 1000}
_SS = 4  # supersampling factor of the procedural renderers
_CHUNK = 64  # images rendered at once: bounds memory at (_CHUNK, S, S) floats

Sampler = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Task:
    """One embedded task.

    Args:
        name: registry key and folder name.
        group: VTAB group it stands in for (natural, specialized, structured).
        classes: class names, index = label.
        description: what the images and labels are (copied into meta.json).
        sample: ``sample(rng, n, image_size) -> (images (n, H, W, 3) uint8, labels (n,))``.
        pool_size: number of distinct source images when the task is drawn from a finite set.
    """

    name: str
    group: str
    classes: tuple[str, ...]
    description: str
    sample: Sampler
    pool_size: int | None = None


# --------------------------------------------------------------------------------------------------
# shared helpers


def task_rng(name: str, seed: int) -> np.random.Generator:
    """The generator of task ``name``: same seed -> same stream; tasks get distinct streams."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """Labels with class counts differing by at most one, in random order."""
    return rng.permutation(np.arange(n) % num_classes)


def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1] of the supersampled canvas, (1, S, 1) and (1, 1, S)."""
    s = image_size * _SS
    c = ((np.arange(s, dtype=np.float32) + 0.5) / s).astype(np.float32)
    return c[None, :, None], c[None, None, :]


def _downsample(hi: np.ndarray, image_size: int) -> np.ndarray:
    """Box-filter (B, S, S, C) -> (B, image_size, image_size, C): exact area coverage."""
    b, _, _, c = hi.shape
    blocks = hi.reshape(b, image_size, _SS, image_size, _SS, c)
    out = np.zeros((b, image_size, image_size, c), np.float32)
    for i in range(_SS):  # strided adds: much faster than a mean over two inner axes
        for j in range(_SS):
            out += blocks[:, :, i, :, j, :]
    return out / (_SS * _SS)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, (...,) each -> (..., 3) in [0, 1]."""
    from matplotlib.colors import hsv_to_rgb

    return hsv_to_rgb(np.stack([h % 1.0, s, v], axis=-1)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# digits (natural): sklearn's bundled 8x8 handwritten digits


def _sample_digits(rng: np.random.Generator, n: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    pool = data.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    if n > len(pool):
        raise ValueError(f"digits: {n} images asked for, the bundled set has {len(pool)}")
    order = rng.permutation(len(pool))[:n]
    labels = data.target[order].astype(np.int64)
    # Nuisances that make raw pixels a weak cue while the digit stays legible: size, rotation,
    # position, foreground/background colours, sensor noise.
    side = rng.uniform(0.55, 0.85, n) * image_size
    angle = rng.uniform(-20.0, 20.0, n)
    bg_h, fg_h = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    bg = _hsv(bg_h, rng.uniform(0.0, 0.6, n), rng.uniform(0.0, 0.45, n))
    fg = _hsv(fg_h, rng.uniform(0.0, 0.8, n), rng.uniform(0.7, 1.0, n))
    u = rng.uniform(0, 1, (n, 2))
    noise_sd = rng.uniform(0.02, 0.08, n)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    for k, idx in enumerate(order):
        d = max(4, int(round(side[k])))
        glyph = Image.fromarray(_to_uint8(pool[idx]), mode="L").resize((d, d), Image.Resampling.BICUBIC)
        glyph = glyph.rotate(angle[k], resample=Image.Resampling.BICUBIC, expand=True)
        g = np.asarray(glyph, dtype=np.float32) / 255.0
        gh, gw = g.shape
        canvas = np.zeros((image_size + 2 * gh, image_size + 2 * gw), np.float32)
        # top-left so that the glyph stays (mostly) inside the image
        y0 = gh + int(round(u[k, 0] * max(0, image_size - gh)))
        x0 = gw + int(round(u[k, 1] * max(0, image_size - gw)))
        canvas[y0 : y0 + gh, x0 : x0 + gw] = g
        alpha = canvas[gh : gh + image_size, gw : gw + image_size, None]  # (H, W, 1)
        img = bg[k] * (1 - alpha) + fg[k] * alpha + rng.normal(0, noise_sd[k], (image_size, image_size, 3))
        images[k] = _to_uint8(img)
    return images, labels


# --------------------------------------------------------------------------------------------------
# dSprites-like sprites (structured)

SPRITE_SHAPES = ("square", "ellipse", "heart")
LOC_BINS = 16
LOC_RANGE = (0.17, 0.83)  # centre positions that keep the largest sprite inside the image
ORI_BINS = 8
ORI_RANGE = np.pi / 2  # a quarter turn: the square's period, so no sprite's orientation label aliases


def _sprite_mask(
    shape: int, cx: np.ndarray, cy: np.ndarray, half: np.ndarray, theta: np.ndarray, image_size: int
) -> np.ndarray:
    """Binary supersampled masks (B, S, S) of sprites of one shape; per-sprite centre, size, angle (B,)."""
    yy, xx = _grid(image_size)
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    du, dv = (xx - cx[:, None, None]), (yy - cy[:, None, None])
    h = half[:, None, None]
    u, v = (c * du + s * dv) / h, (-s * du + c * dv) / h  # sprite frame, unit half-size
    if SPRITE_SHAPES[shape] == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8  # a bit smaller: a square looks big
    if SPRITE_SHAPES[shape] == "ellipse":
        return u**2 + (v / 0.5) ** 2 <= 1.0
    hx, hy = u * 1.1, -(v * 1.1 + 0.15)  # the classic heart curve, centred, tip along +v
    return (hx**2 + hy**2 - 1.0) ** 3 - hx**2 * hy**3 <= 0.0


def _sample_sprites(
    rng: np.random.Generator, n: int, image_size: int, *, target: str
) -> tuple[np.ndarray, np.ndarray]:
    num = LOC_BINS if target == "loc" else ORI_BINS
    labels = _balanced_labels(rng, n, num)
    shape = rng.integers(0, len(SPRITE_SHAPES), n)
    if target == "loc":
        # small sprites (dSprites' 6 scales span a factor 2) that stay whole inside the image
        half = rng.uniform(0.08, 0.15, n)
        width = (LOC_RANGE[1] - LOC_RANGE[0]) / num
        cx = LOC_RANGE[0] + (labels + rng.uniform(0, 1, n)) * width
        cy = rng.uniform(*LOC_RANGE, n)
        theta = rng.uniform(0, 2 * np.pi, n)
    else:
        # larger sprites near the centre: orientation, not position, is the signal
        half = rng.uniform(0.12, 0.22, n)
        theta = (labels + rng.uniform(0, 1, n)) * (ORI_RANGE / num)
        cx = rng.uniform(0.42, 0.58, n)
        cy = rng.uniform(0.42, 0.58, n)
    cx, cy, half, theta = (a.astype(np.float32) for a in (cx, cy, half, theta))

    masks = np.empty((n, image_size, image_size), np.float32)
    for k in range(len(SPRITE_SHAPES)):
        idx = np.flatnonzero(shape == k)
        for start in range(0, len(idx), _CHUNK):
            sub = idx[start : start + _CHUNK]
            m = _sprite_mask(k, cx[sub], cy[sub], half[sub], theta[sub], image_size)
            masks[sub] = _downsample(m[..., None].astype(np.float32), image_size)[..., 0]
    return np.repeat(_to_uint8(masks)[..., None], 3, axis=-1), labels


def _sample_dsprites_loc(rng: np.random.Generator, n: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    return _sample_sprites(rng, n, image_size, target="loc")


def _sample_dsprites_ori(rng: np.random.Generator, n: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    return _sample_sprites(rng, n, image_size, target="ori")


# --------------------------------------------------------------------------------------------------
# CLEVR-like counting (structured)

CLEVR_MIN, CLEVR_MAX = 3, 10
_CLEVR_SHAPES = ("circle", "square", "triangle")


def _place_objects(rng: np.random.Generator, count: int) -> list[tuple[float, float, float]]:
    """``count`` objects ``(x, y, radius)`` with no two touching, by rejection sampling.

    Each object keeps its drawn radius while positions are retried; a scene that gets crowded is
    restarted, so neither size nor place depends on how crowded the scene is.
    """
    while True:
        placed: list[tuple[float, float, float]] = []
        for r in rng.uniform(0.06, 0.095, count).tolist():
            lo, span = r + 0.02, 1.0 - 2 * (r + 0.02)
            for x, y in (lo + span * rng.random((200, 2))).tolist():  # plain floats: tiny, many checks
                if all((x - px) ** 2 + (y - py) ** 2 > (r + pr + 0.03) ** 2 for px, py, pr in placed):
                    placed.append((x, y, r))
                    break
            else:
                break
        if len(placed) == count:
            return placed


def _sample_clevr_count(rng: np.random.Generator, n: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    num = CLEVR_MAX - CLEVR_MIN + 1
    labels = _balanced_labels(rng, n, num)
    counts = labels + CLEVR_MIN
    scenes = [_place_objects(rng, int(c)) for c in counts]
    total = int(counts.sum())
    kinds = rng.integers(0, len(_CLEVR_SHAPES), total)
    colours = _hsv(rng.uniform(0, 1, total), rng.uniform(0.6, 1.0, total), rng.uniform(0.2, 0.75, total))
    # light grey, slightly tinted floor with a soft vertical gradient (a lamp above the scene)
    floor = _hsv(rng.uniform(0, 1, n), rng.uniform(0, 0.1, n), rng.uniform(0.6, 0.75, n))  # (n, 3)
    slope = rng.uniform(-0.15, 0.15, n).astype(np.float32)
    noise = rng.normal(0, 0.03, (n, image_size, image_size, 3)).astype(np.float32)
    s = image_size * _SS
    coord = (np.arange(s, dtype=np.float32) + 0.5) / s
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    first = np.concatenate([[0], np.cumsum(counts)])  # index of each scene's first object
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        canvas = (
            floor[start:stop, None, None, :] + (slope[start:stop, None] * (coord - 0.5))[:, :, None, None]
        )
        canvas = np.broadcast_to(canvas, (stop - start, s, s, 3)).copy()  # (b, S, S, 3)
        for k in range(start, stop):
            objs = zip(
                scenes[k], kinds[first[k] : first[k + 1]], colours[first[k] : first[k + 1]], strict=True
            )
            for (cx, cy, r), kind, colour in objs:
                # draw in the object's bounding window only
                y0, y1 = int((cy - r) * s), int(np.ceil((cy + r) * s)) + 1
                x0, x1 = int((cx - r) * s), int(np.ceil((cx + r) * s)) + 1
                dv, du = coord[y0:y1, None] - cy, coord[None, x0:x1] - cx
                if kind == 0:
                    m = du**2 + dv**2 <= r**2
                elif kind == 1:
                    m = np.maximum(np.abs(du), np.abs(dv)) <= 0.85 * r
                else:  # upright triangle inscribed in the circle of radius r
                    m = (dv <= 0.5 * r) & (dv >= -r + 1.732 * np.abs(du))
                # darker towards the bottom: CLEVR's shading, cheaply
                shade = np.broadcast_to(1.0 - 0.3 * np.clip((dv + r) / (2 * r), 0, 1), m.shape)
                canvas[k - start, y0:y1, x0:x1][m] = colour * shade[m][:, None]
        images[start:stop] = _to_uint8(_downsample(canvas, image_size) + noise[start:stop])
    return images, labels


# --------------------------------------------------------------------------------------------------
# procedural textures (specialized)

TEXTURE_CLASSES = (
    "stripes_0",
    "stripes_45",
    "stripes_90",
    "stripes_135",
    "checker",
    "dots",
    "crosshatch",
    "rings",
    "waves",
    "bricks",
    "fine_noise",
    "clouds",
)


def _smooth_noise(rng: np.random.Generator, b: int, s: int, cells: int) -> np.ndarray:
    """(b, s, s) value noise in [0, 1]: a random cells x cells lattice, bilinearly upsampled."""
    lattice = rng.uniform(0, 1, (b, cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, s, dtype=np.float32)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = lattice[:, i] * (1 - f)[None, :, None] + lattice[:, i + 1] * f[None, :, None]  # (b, s, c+1)
    return rows[:, :, i] * (1 - f)[None, None, :] + rows[:, :, i + 1] * f[None, None, :]


def _texture_pattern(cls: int, rng: np.random.Generator, b: int, image_size: int) -> np.ndarray:
    """Intensity patterns (b, S, S) in [0, 1] of texture class ``cls`` with random phase and scale."""
    yy, xx = _grid(image_size)
    s = image_size * _SS

    def col(v: np.ndarray) -> np.ndarray:
        return v.astype(np.float32)[:, None, None]

    freq = col(rng.uniform(3.0, 6.0, b))  # cycles per image
    phase = col(rng.uniform(0, 2 * np.pi, b))
    name = TEXTURE_CLASSES[cls]
    if name.startswith("stripes_"):
        ang = col(np.deg2rad(float(name.split("_")[1]) + rng.uniform(-12, 12, b)))
        t = xx * np.cos(ang) + yy * np.sin(ang)
        return 0.5 + 0.5 * np.sin(2 * np.pi * freq * t + phase)
    if name == "checker":
        ang = col(rng.uniform(0, np.pi / 2, b))
        u, v = xx * np.cos(ang) + yy * np.sin(ang), -xx * np.sin(ang) + yy * np.cos(ang)
        return ((np.floor(u * freq + phase) + np.floor(v * freq + phase)) % 2).astype(np.float32)
    if name == "dots":
        u, v = (xx * freq + phase) % 1.0 - 0.5, (yy * freq + 2 * phase) % 1.0 - 0.5
        return (u**2 + v**2 <= col(rng.uniform(0.2, 0.32, b)) ** 2).astype(np.float32)
    if name == "crosshatch":
        ang = col(rng.uniform(0, np.pi / 2, b))
        a = np.sin(2 * np.pi * freq * (xx * np.cos(ang) + yy * np.sin(ang)) + phase)
        c = np.sin(2 * np.pi * freq * (-xx * np.sin(ang) + yy * np.cos(ang)) + 2 * phase)
        return ((a > 0.6) | (c > 0.6)).astype(np.float32)
    if name == "rings":
        cx, cy = col(rng.uniform(-0.5, 1.5, b)), col(rng.uniform(-0.5, 1.5, b))
        return 0.5 + 0.5 * np.sin(2 * np.pi * freq * np.hypot(xx - cx, yy - cy) + phase)
    if name == "waves":
        ang = col(rng.choice([0.0, np.pi / 2], b))
        u, v = xx * np.cos(ang) + yy * np.sin(ang), -xx * np.sin(ang) + yy * np.cos(ang)
        wobble = col(rng.uniform(0.04, 0.08, b)) * np.sin(2 * np.pi * col(rng.uniform(1.5, 3, b)) * v)
        return 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * (u + wobble) + phase))
    if name == "bricks":
        rows = yy * freq + phase
        row_id = np.floor(rows)
        u = xx * freq * 0.5 + 0.5 * (row_id % 2) + phase
        mortar = (rows % 1.0 < 0.18) | (u % 1.0 < 0.09)
        return (~mortar).astype(np.float32)
    if name == "fine_noise":
        return rng.uniform(0, 1, (b, s // _SS, s // _SS)).repeat(_SS, 1).repeat(_SS, 2).astype(np.float32)
    if name == "clouds":
        return _smooth_noise(rng, b, s, 3) * 0.6 + _smooth_noise(rng, b, s, 6) * 0.4
    raise KeyError(name)


def _sample_textures(rng: np.random.Generator, n: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    num = len(TEXTURE_CLASSES)
    labels = _balanced_labels(rng, n, num)
    s = image_size * _SS
    patterns = np.empty((n, s, s), np.float32)
    for cls in range(num):
        idx = np.flatnonzero(labels == cls)
        for start in range(0, len(idx), _CHUNK):
            sub = idx[start : start + _CHUNK]
            patterns[sub] = _texture_pattern(cls, rng, len(sub), image_size)
    # "ink on paper": a bright background and a darker ink of random hue, with contrast jitter
    paper = _hsv(rng.uniform(0, 1, n), rng.uniform(0, 0.5, n), rng.uniform(0.7, 1.0, n))
    ink = _hsv(rng.uniform(0, 1, n), rng.uniform(0.2, 1.0, n), rng.uniform(0.05, 0.5, n))
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        p = _downsample(patterns[sl, ..., None], image_size)  # (b, H, W, 1)
        img = paper[sl, None, None] * (1 - p) + ink[sl, None, None] * p
        img += rng.normal(0, 0.04, img.shape)
        images[sl] = _to_uint8(img)
    return images, labels


# --------------------------------------------------------------------------------------------------
# registry

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "digits",
            "natural",
            tuple(str(d) for d in range(10)),
            "sklearn's bundled handwritten digits (UCI, 1797 real 8x8 scans), upscaled (bicubic) with "
            "random size, rotation (+-20 deg), position, foreground/background colours and noise; "
            "label = digit. Only 1797 images exist: the test split holds the images left after "
            "train800 and val200 (797 at the default sizes, fewer than VTAB's >= 1000).",
            _sample_digits,
            pool_size=1797,
        ),
        Task(
            "dsprites_loc",
            "structured",
            tuple(f"x{b}" for b in range(LOC_BINS)),
            f"dSprites-like white sprites (square, ellipse, heart; random scale, orientation, x, y) on "
            f"black; label = x-position of the centre in {LOC_BINS} equal bins over {list(LOC_RANGE)} of the "
            f"width (as VTAB's dsprites_loc: 16 bins).",
            _sample_dsprites_loc,
        ),
        Task(
            "dsprites_ori",
            "structured",
            tuple(f"ori{b}" for b in range(ORI_BINS)),
            f"dSprites-like white sprites (square, ellipse, heart; random scale, centre within +-0.08 "
            f"of the image centre) on black; label = orientation in {ORI_BINS} bins over a quarter turn. VTAB "
            f"bins a full turn into 16, where the square's and ellipse's symmetric poses get different "
            f"labels for the same picture; a quarter turn keeps every label a function of the image.",
            _sample_dsprites_ori,
        ),
        Task(
            "clevr_count",
            "structured",
            tuple(str(c) for c in range(CLEVR_MIN, CLEVR_MAX + 1)),
            f"CLEVR-like scenes: {CLEVR_MIN} to {CLEVR_MAX} non-overlapping shaded circles, squares and "
            f"triangles of random size and colour on a light tinted floor with a gradient and noise; "
            f"label = number of objects (8 classes, as VTAB's clevr_count).",
            _sample_clevr_count,
        ),
        Task(
            "textures",
            "specialized",
            TEXTURE_CLASSES,
            "Procedural textures (DTD stand-in): oriented stripes (4 angles, +-12 deg), checkers, dots, "
            "crosshatch, rings, waves, bricks, fine noise, clouds; random frequency, phase and rotation, "
            "random ink/paper colours, noise; label = texture family.",
            _sample_textures,
        ),
    )
}


# --------------------------------------------------------------------------------------------------
# entry point


def parse_sizes(text: str) -> dict[str, int]:
    """``"train800=800,val200=200,test=1000"`` -> dict; every split of ``SPLIT_ORDER`` is required."""
    sizes: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"sizes {text!r}: bad item {item!r}, expected split=count")
        sizes[key.strip()] = int(value)
    _check_sizes(sizes)
    return sizes


def _check_sizes(sizes: Mapping[str, int]) -> None:
    if set(sizes) != set(SPLIT_ORDER):
        raise ValueError(f"sizes: expected exactly the splits {list(SPLIT_ORDER)}, got {sorted(sizes)}")
    bad = {k: v for k, v in sizes.items() if int(v) < 1}
    if bad:
        raise ValueError(f"sizes: every split needs at least one image, got {bad}")


def generate_task(
    name: str,
    out_dir: str | os.PathLike,
    *,
    seed: int,
    image_size: int = 32,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Generate task ``name`` into ``out_dir`` (VTAB-1k layout) and return its meta.

    Images are drawn once, then cut in order into train800 | val200 | test;
    ``train800val200`` is train800 followed by val200, as in VTAB-1k.

    Args:
        name: a key of :data:`TASKS`.
        out_dir: destination folder (replaced atomically).
        seed: same seed -> byte-identical images and list files.
        image_size: side of the square images.
        sizes: images per split (keys train800, val200, test). For a finite task (digits) the test
            split is capped at what is left after train800 and val200.
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    task = TASKS[name]
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    _check_sizes(sizes)
    if image_size < 8:
        raise ValueError(f"image_size={image_size}: too small (>= 8)")
    description = task.description
    if task.pool_size is not None:
        left = task.pool_size - sizes["train800"] - sizes["val200"]
        if left < 1:
            raise ValueError(
                f"task {name}: train800+val200={sizes['train800'] + sizes['val200']} leaves no test "
                f"image out of {task.pool_size}"
            )
        if sizes["test"] > left:
            description += f" Test capped at {left} (asked {sizes['test']})."
            sizes["test"] = left

    images, labels = task.sample(task_rng(name, seed), sum(sizes.values()), image_size)
    bounds = np.cumsum([0, *(sizes[k] for k in SPLIT_ORDER)])
    ranges = {k: np.arange(bounds[i], bounds[i + 1]) for i, k in enumerate(SPLIT_ORDER)}
    splits = {
        "train800": ranges["train800"],
        "val200": ranges["val200"],
        "train800val200": np.concatenate([ranges["train800"], ranges["val200"]]),
        "test": ranges["test"],
    }
    meta_extra = {
        "name": name,
        "seed": int(seed),
        "kind": "embedded",
        "group": task.group,
        "description": description,
    }
    return write_split_folder(Path(out_dir), images, labels, splits, task.classes, meta_extra)
