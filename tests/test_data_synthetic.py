"""data/synthetic.py: determinism, VTAB-1k splits, and that each generator's labels mean what they say."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from petlprune.data import synthetic
from petlprune.data.synthetic import TASKS, generate_task, parse_sizes, task_rng
from petlprune.data.writer import sha256_file

TINY = {"train800": 24, "val200": 8, "test": 16}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_bytes_other_seed_differs(tmp_path, name):
    generate_task(name, tmp_path / "a", seed=5, image_size=16, sizes=TINY)
    generate_task(name, tmp_path / "b", seed=5, image_size=16, sizes=TINY)
    generate_task(name, tmp_path / "c", seed=6, image_size=16, sizes=TINY)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    images_a = {k: v for k, v in a.items() if k.startswith("images/")}
    images_c = {k: v for k, v in c.items() if k.startswith("images/")}
    assert images_a.keys() == images_c.keys() and images_a != images_c


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_meta_and_labels(tmp_path, name):
    root = tmp_path / name
    meta = generate_task(name, root, seed=0, image_size=16, sizes=TINY)
    assert json.loads((root / "meta.json").read_text()) == meta
    assert meta["name"] == name and meta["kind"] == "embedded" and meta["seed"] == 0
    assert meta["counts"] == {"train800": 24, "val200": 8, "train800val200": 32, "test": 16}
    assert meta["num_classes"] == len(meta["classes"]) == len(TASKS[name].classes)
    lists = {}
    for split in meta["counts"]:
        assert meta["sha256"][f"{split}.txt"] == sha256_file(root / f"{split}.txt")
        lists[split] = (root / f"{split}.txt").read_text().splitlines()
    # the union is train800 then val200, as in VTAB-1k; no image is shared with test
    assert lists["train800val200"] == lists["train800"] + lists["val200"]
    paths = {s: {line.split()[0] for line in rows} for s, rows in lists.items()}
    assert not paths["train800val200"] & paths["test"] and not paths["train800"] & paths["val200"]
    labels = [int(line.split()[1]) for rows in lists.values() for line in rows]
    assert 0 <= min(labels) and max(labels) < meta["num_classes"]


def test_finite_task_test_split_is_capped_and_documented(tmp_path, monkeypatch):
    assert TASKS["digits"].pool_size == 1797  # sklearn's bundled set
    pool = np.arange(20)

    def sample(rng, n, image_size):  # a finite task: n distinct pool items, drawn without replacement
        if n > len(pool):
            raise ValueError("pool exhausted")
        picked = rng.permutation(pool)[:n]
        images = np.broadcast_to(picked[:, None, None, None], (n, image_size, image_size, 3)).astype(np.uint8)
        return images, picked % 2

    fake = synthetic.Task("finite", "natural", ("even", "odd"), "a finite pool.", sample, pool_size=len(pool))
    monkeypatch.setitem(TASKS, "finite", fake)
    meta = generate_task(
        "finite", tmp_path / "f", seed=0, image_size=8, sizes={"train800": 10, "val200": 4, "test": 50}
    )
    assert meta["counts"] == {"train800": 10, "val200": 4, "train800val200": 14, "test": 6}
    assert "Test capped at 6 (asked 50)" in meta["description"]
    with pytest.raises(ValueError, match="leaves no test image"):
        generate_task(
            "finite", tmp_path / "g", seed=0, image_size=8, sizes={"train800": 16, "val200": 4, "test": 1}
        )


def test_parse_sizes():
    assert parse_sizes("train800=800,val200=200,test=1000") == {"train800": 800, "val200": 200, "test": 1000}
    with pytest.raises(ValueError, match="bad item"):
        parse_sizes("train800=800,val200,test=1")
    with pytest.raises(ValueError, match="expected exactly the splits"):
        parse_sizes("train800=8,test=1")


def test_unknown_task(tmp_path):
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        generate_task("nope", tmp_path / "x", seed=0)


def test_task_streams_differ_by_name():
    assert task_rng("a", 0).random() != task_rng("b", 0).random()
    assert task_rng("a", 0).random() == task_rng("a", 0).random()


# --- the labels mean what they say (independent measurements on the rendered pixels) ---


def test_dsprites_loc_label_is_x_bin():
    images, labels = TASKS["dsprites_loc"].sample(task_rng("dsprites_loc", 1), 200, 64)
    w = images[..., 0].astype(float)
    cx = (w * (np.arange(64) + 0.5)).sum((1, 2)) / w.sum((1, 2)) / 64  # sprite centroid
    lo, hi = synthetic.LOC_RANGE
    measured = np.floor((cx - lo) / ((hi - lo) / synthetic.LOC_BINS))
    # the heart's centroid sits a little off its centre: allow one bin
    assert np.mean(np.abs(measured - labels) <= 1) >= 0.97


def test_dsprites_ori_label_is_orientation_bin():
    images, labels = TASKS["dsprites_ori"].sample(task_rng("dsprites_ori", 1), 300, 64)
    w = images[..., 0].astype(float)
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    m = w.sum((1, 2))
    mx, my = (w * xx).sum((1, 2)) / m, (w * yy).sum((1, 2)) / m
    dx, dy = xx - mx[:, None, None], yy - my[:, None, None]
    mu20, mu02, mu11 = ((w * dx * dx).sum((1, 2)), (w * dy * dy).sum((1, 2)), (w * dx * dy).sum((1, 2)))
    root = np.sqrt(((mu20 - mu02) / 2) ** 2 + mu11**2)
    ratio = ((mu20 + mu02) / 2 + root) / ((mu20 + mu02) / 2 - root)
    elongated = ratio > 2.5  # the ellipses: the only sprites with a well-defined principal axis
    assert elongated.sum() > 50
    phi = (0.5 * np.arctan2(2 * mu11, mu20 - mu02)) % np.pi  # major axis angle, y pointing down
    measured = np.floor(phi[elongated] / (synthetic.ORI_RANGE / synthetic.ORI_BINS))
    assert np.mean(np.abs(measured - labels[elongated]) <= 1) >= 0.95
    assert np.mean(measured == labels[elongated]) >= 0.6


def test_clevr_label_is_object_count():
    images, labels = TASKS["clevr_count"].sample(task_rng("clevr_count", 1), 120, 64)
    x = images.astype(float) / 255
    counted = []
    for im in x:
        floor = np.median(im, axis=1, keepdims=True)  # the floor's colour, per row (vertical gradient)
        mask = ndimage.binary_opening(np.abs(im - floor).max(-1) > 0.15)
        counted.append(ndimage.label(mask)[1])
    assert np.mean(np.array(counted) == labels + synthetic.CLEVR_MIN) >= 0.95


def test_texture_stripes_orientation():
    names = synthetic.TEXTURE_CLASSES
    images, labels = TASKS["textures"].sample(task_rng("textures", 1), 240, 32)
    g = images.astype(float).mean(-1)
    ex = np.abs(np.diff(g, axis=2)).mean((1, 2))  # change along x: vertical stripes
    ey = np.abs(np.diff(g, axis=1)).mean((1, 2))
    vertical = labels == names.index("stripes_0")  # t = x: intensity varies along x
    horizontal = labels == names.index("stripes_90")
    assert np.all(ex[vertical] > 1.5 * ey[vertical])
    assert np.all(ey[horizontal] > 1.5 * ex[horizontal])


def test_labels_are_balanced():
    _, labels = TASKS["textures"].sample(task_rng("textures", 0), 100, 8)
    counts = np.bincount(labels, minlength=len(synthetic.TEXTURE_CLASSES))
    assert counts.max() - counts.min() <= 1
