"""data/fractal.py: the chaos game on known attractors, class sampling, the source layout."""

from __future__ import annotations

import numpy as np
import pytest

from petlprune.data import fractal
from petlprune.data.fractal import chaos_game, filling_rate, generate_source, sample_class_systems
from petlprune.data.vtab import VTABDataset


def _system(*maps):
    m = np.zeros((1, fractal.MAX_MAPS, 2, 3))
    p = np.zeros((1, fractal.MAX_MAPS))
    for k, (a, b, c, d, e, f) in enumerate(maps):
        m[0, k] = [[a, b, e], [c, d, f]]
        p[0, k] = 1.0 / len(maps)
    return m, p


SEGMENT = _system((0.5, 0, 0, 0.5, 0, 0), (0.5, 0, 0, 0.5, 0.5, 0))  # attractor: [0, 1] x {0}
SQUARE = _system(*[(0.5, 0, 0, 0.5, e, f) for e in (0, 0.5) for f in (0, 0.5)])  # attractor: [0, 1]^2
SIERPINSKI = _system((0.5, 0, 0, 0.5, 0, 0), (0.5, 0, 0, 0.5, 0.5, 0), (0.5, 0, 0, 0.5, 0, 0.5))


def test_chaos_game_known_attractors():
    rng = np.random.default_rng(0)
    pts = chaos_game(*SEGMENT, rng, chains=8, steps=20)[0]
    assert pts.shape == (160, 2)
    assert np.all(pts[:, 1] == 0) and pts[:, 0].min() >= 0 and pts[:, 0].max() <= 1
    assert pts[:, 0].max() - pts[:, 0].min() > 0.9  # it explores the whole segment
    pts = chaos_game(*SIERPINSKI, rng)[0].astype(np.float64)
    assert np.all(pts >= 0) and np.all(pts.sum(1) <= 1 + 1e-6)  # inside the triangle
    # ... and never in the removed middle triangle (x < 1/2, y < 1/2, x + y > 1/2), up to float error
    inside_hole = (pts[:, 0] < 0.5 - 1e-4) & (pts[:, 1] < 0.5 - 1e-4) & (pts.sum(1) > 0.5 + 1e-4)
    assert not inside_hole.any()


def test_filling_rate():
    rng = np.random.default_rng(0)
    assert filling_rate(*SQUARE, rng)[0] > 0.95
    sierpinski = filling_rate(*SIERPINSKI, rng)[0]
    assert 0.2 < sierpinski < 0.6  # 3 of 4 quadrants at every scale: about (3/4)^5 at 32 pixels = 0.24+
    # a segment spans one row once fitted to its (degenerate) bounding box
    assert filling_rate(*SEGMENT, rng)[0] < 0.05


def test_sampled_classes_are_contractive_and_fill():
    rng = np.random.default_rng(3)
    systems = sample_class_systems(rng, 6)
    assert len(systems) == 6
    for s in systems:
        assert fractal.MIN_MAPS <= s.num_maps <= fractal.MAX_MAPS
        used = s.probs > 0
        assert np.isclose(s.probs.sum(), 1)
        sigma = np.linalg.svd(s.maps[used, :, :2], compute_uv=False)[:, 0]
        assert np.all(sigma < 1)
        # probabilities proportional to |det| as in FractalDB
        det = np.abs(np.linalg.det(s.maps[used, :, :2]))
        assert np.allclose(s.probs[used], det / det.sum())
        assert filling_rate(s.maps[None], s.probs[None], rng)[0] >= fractal.MIN_FILL - 0.05
        assert len(s.to_list()) == s.num_maps and len(s.to_list()[0]) == 7


def test_perturbation_changes_one_parameter_and_stays_contractive():
    rng = np.random.default_rng(0)
    systems = sample_class_systems(rng, 2)
    labels = np.array([0, 1] * 20)
    maps, probs = fractal._perturbed(systems, labels, rng)
    base = np.stack([systems[c].maps for c in labels])
    changed = ~np.isclose(maps, base)
    used = probs > 0
    per_image = changed.reshape(len(labels), fractal.MAX_MAPS, 6).any(1).sum(1)
    assert np.all(per_image <= 1) and per_image.mean() > 0.9  # one of a..f, in every map
    ratio = maps[changed] / base[changed]
    assert np.all((ratio >= fractal.WEIGHT_RANGE[0] - 1e-9) & (ratio <= fractal.WEIGHT_RANGE[1] + 1e-9))
    sigma = np.linalg.svd(maps[..., :2], compute_uv=False)[..., 0]
    assert np.all(sigma[used] < 1)


def test_source_layout_and_determinism(tmp_path):
    kw = dict(seed=1, classes=3, train_per_class=5, test_per_class=2, image_size=16)
    meta = generate_source(tmp_path / "a" / "fractal", **kw)
    generate_source(tmp_path / "b" / "fractal", **kw)
    generate_source(tmp_path / "c" / "fractal", **{**kw, "seed": 2})
    root = tmp_path / "a" / "fractal"
    assert (
        meta["kind"] == "source" and meta["num_classes"] == 3 and meta["counts"] == {"train": 15, "test": 6}
    )
    assert meta["image_size"] == 16 and len(meta["ifs"]) == 3
    for split, per in (("train", 5), ("test", 2)):
        labels = VTABDataset(root, split, image_size=16).labels
        assert np.bincount(labels).tolist() == [per] * 3
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert [(root / f).read_bytes() for f in files] == [
        (tmp_path / "b" / "fractal" / f).read_bytes() for f in files
    ]
    other = [(tmp_path / "c" / "fractal" / f).read_bytes() for f in files if f.suffix == ".png"]
    assert [(root / f).read_bytes() for f in files if f.suffix == ".png"] != other
    # fractals are drawn on black and every image shows one
    px = VTABDataset(root, "train", image_size=16, cache=True).pixels()
    assert (px.amax(dim=(1, 2, 3)) > 100).all()


def test_source_rejects_bad_counts(tmp_path):
    with pytest.raises(ValueError, match="classes=1"):
        generate_source(tmp_path / "x", seed=0, classes=1, train_per_class=1, test_per_class=1, image_size=8)
