"""data/writer.py: layout, meta.json, deterministic bytes, atomic replacement."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from petlprune.data import writer
from petlprune.data.writer import sha256_file, write_split_folder

META = {"seed": 3, "kind": "embedded", "description": "test data"}


def _data(n=12, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, n)
    return images, labels


def test_layout_meta_and_pixels(tmp_path):
    images, labels = _data()
    splits = {"a": np.arange(0, 6), "b": np.arange(6, 10), "ab": np.arange(0, 10)}
    meta = write_split_folder(tmp_path / "t", images, labels, splits, ["x", "y", "z"], META)
    root = tmp_path / "t"
    assert json.loads((root / "meta.json").read_text()) == meta
    assert meta["name"] == "t" and meta["num_classes"] == 3 and meta["classes"] == ["x", "y", "z"]
    assert meta["counts"] == {"a": 6, "b": 4, "ab": 10}
    assert meta["image_size"] == 8 and meta["seed"] == 3 and meta["kind"] == "embedded"
    for name in ("a.txt", "b.txt", "ab.txt"):
        assert meta["sha256"][name] == sha256_file(root / name)
    lines = (root / "ab.txt").read_text().splitlines()
    assert lines[0] == f"images/00000.png {labels[0]}"
    assert len(lines) == 10
    # images used by no split are not written; written ones are lossless
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"{i:05d}.png" for i in range(10)]
    decoded = np.stack([np.asarray(Image.open(root / "images" / f"{i:05d}.png")) for i in range(10)])
    assert np.array_equal(decoded, images[:10])
    assert meta["pixels_sha256"] == hashlib.sha256(decoded.tobytes()).hexdigest()


def test_same_input_same_bytes(tmp_path):
    images, labels = _data()
    splits = {"s": np.arange(12)}
    write_split_folder(tmp_path / "1", images, labels, splits, ["a", "b", "c"], META)
    write_split_folder(tmp_path / "2", images, labels, splits, ["a", "b", "c"], META)
    for p in sorted((tmp_path / "1").rglob("*.*")):
        if p.name != "meta.json":
            assert p.read_bytes() == (tmp_path / "2" / p.relative_to(tmp_path / "1")).read_bytes()


def test_existing_folder_is_replaced(tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    images, labels = _data()
    write_split_folder(out, images, labels, {"s": np.arange(3)}, ["a", "b", "c"], META)
    assert not (out / "stale.txt").exists()
    assert (out / "s.txt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no temporary left behind


def test_killed_write_leaves_nothing(tmp_path, monkeypatch):
    images, labels = _data()
    calls = []

    def failing(image):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # a job killed mid-write
        return b"png"

    monkeypatch.setattr(writer, "png_bytes", failing)
    out = tmp_path / "t"
    out.mkdir()
    (out / "keep.txt").write_text("previous complete version")
    with pytest.raises(KeyboardInterrupt):
        write_split_folder(out, images, labels, {"s": np.arange(12)}, ["a", "b", "c"], META)
    assert (out / "keep.txt").read_text() == "previous complete version"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": np.array([0] * 11 + [3])}, "labels"),
        ({"splits": {"s": np.array([12])}}, r"splits\['s'\]"),
        ({"splits": {"../x": np.array([0])}}, "split name"),
        ({"meta_extra": {"seed": 0}}, "kind"),
        ({"images": np.zeros((12, 8, 8), np.uint8)}, "images"),
    ],
)
def test_bad_input_names_the_culprit(tmp_path, kwargs, match):
    images, labels = _data()
    args = {
        "images": images,
        "labels": labels,
        "splits": {"s": np.arange(3)},
        "classes": ["a", "b", "c"],
        "meta_extra": META,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        write_split_folder(tmp_path / "t", **args)
    assert not (tmp_path / "t").exists()
