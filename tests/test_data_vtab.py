"""data/vtab.py: the VTAB-1k list-file loader on generated data, and every bad-data case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from petlprune.data.synthetic import generate_task
from petlprune.data.vtab import (
    DatasetError,
    VTABDataset,
    import_vtab_folder,
    load_meta,
    make_loader,
)
from petlprune.data.writer import write_split_folder

META = {"seed": 0, "kind": "embedded", "description": "test"}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("vtab") / "textures"
    generate_task("textures", root, seed=0, image_size=16, sizes={"train800": 20, "val200": 6, "test": 10})
    return root


@pytest.fixture
def small(tmp_path):
    """A 3-class folder of 6 random 8x8 images, split s = all of them."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    write_split_folder(tmp_path / "t", images, [0, 1, 2, 0, 1, 2], {"s": np.arange(6)}, ["a", "b", "c"], META)
    return tmp_path / "t", images


def test_items_shapes_normalisation_labels(task):
    ds = VTABDataset(task, "train800val200", image_size=16)
    meta = load_meta(task)
    assert len(ds) == 26 and ds.num_classes == meta["num_classes"] and ds.classes == meta["classes"]
    lines = (task / "train800val200.txt").read_text().splitlines()
    assert ds.labels == [int(line.split()[1]) for line in lines]
    x, y = ds[3]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == ds.labels[3]
    # mean=std=0.5 maps [0, 255] onto [-1, 1]; undoing it gives back the stored pixels exactly
    png = np.asarray(Image.open(task / lines[3].split()[0]))
    assert np.array_equal(((x * 0.5 + 0.5) * 255).round().byte().permute(1, 2, 0).numpy(), png)
    assert ds.root == task and ds.split == "train800val200"


def test_custom_mean_std_and_resize(task):
    ds = VTABDataset(task, "test", image_size=24, mean=(0.1, 0.2, 0.3), std=(0.2, 0.3, 0.4))
    x, _ = ds[0]
    assert x.shape == (3, 24, 24)
    raw = VTABDataset(task, "test", image_size=24, mean=(0, 0, 0), std=(1, 1, 1))[0][0]
    expected = (raw - torch.tensor([0.1, 0.2, 0.3])[:, None, None]) / torch.tensor([0.2, 0.3, 0.4])[
        :, None, None
    ]
    assert torch.allclose(x, expected, atol=1e-6)


@pytest.mark.parametrize("image_size", [16, 24])
def test_cache_equals_no_cache(task, image_size):
    plain = VTABDataset(task, "test", image_size=image_size)
    cached = VTABDataset(task, "test", image_size=image_size, cache=True)
    for i in range(len(plain)):
        (a, la), (b, lb) = plain[i], cached[i]
        assert la == lb and torch.equal(a, b)
    assert torch.equal(plain.pixels(), cached.pixels())


def test_loader_is_seeded(task):
    ds = VTABDataset(task, "train800", image_size=16, cache=True)

    def order(seed):
        return [y.tolist() for _, y in make_loader(ds, 5, shuffle=True, seed=seed)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    batches = list(make_loader(ds, 8, shuffle=False, seed=0, drop_last=True))
    assert len(batches) == 2 and batches[0][0].shape == (8, 3, 16, 16)
    assert batches[0][1].tolist() == ds.labels[:8]


# --- bad data: each error names the list file and line (and the image) ---


def test_missing_list_file(small):
    root, _ = small
    with pytest.raises(DatasetError, match=r"nope\.txt: list file not found"):
        VTABDataset(root, "nope", image_size=8)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        VTABDataset(tmp_path / "absent", "s", image_size=8)


@pytest.mark.parametrize(
    "bad_line, match",
    [
        ("images/00001.png", r"s\.txt:3: malformed line 'images/00001.png': expected 'path label'"),
        ("images/00001.png one", r"s\.txt:3: malformed line .*label 'one' is not an integer"),
        ("images/99999.png 1", r"s\.txt:3: image not found: .*99999\.png"),
        ("images/00001.png 3", r"s\.txt:3: label 3 outside \[0, 3\) for image images/00001\.png"),
        ("images/00001.png -1", r"s\.txt:3: label -1 outside"),
    ],
)
def test_bad_line_names_file_and_line(small, bad_line, match):
    root, _ = small
    lines = (root / "s.txt").read_text().splitlines()
    lines[2] = bad_line
    (root / "s.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=match):
        VTABDataset(root, "s", image_size=8)


def test_corrupt_image_lazy_and_cached(small):
    root, _ = small
    (root / "images" / "00004.png").write_bytes(b"not a png at all")
    ds = VTABDataset(root, "s", image_size=8)  # construction does not decode
    ds[0]
    with pytest.raises(DatasetError, match=r"s\.txt:5: cannot read image .*00004\.png"):
        ds[4]
    with pytest.raises(DatasetError, match=r"s\.txt:5: cannot read image .*00004\.png"):
        VTABDataset(root, "s", image_size=8, cache=True)


def test_truncated_image(small):
    root, _ = small
    path = root / "images" / "00002.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DatasetError, match=r"s\.txt:3: cannot read image .*00002\.png"):
        VTABDataset(root, "s", image_size=8, cache=True)


def test_bad_meta(small):
    root, _ = small
    (root / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"meta\.json: not valid JSON"):
        VTABDataset(root, "s", image_size=8)
    (root / "meta.json").write_text(json.dumps({"num_classes": 3, "classes": ["a"]}))
    with pytest.raises(DatasetError, match=r"meta\.json: 'classes' must be a list of num_classes=3"):
        VTABDataset(root, "s", image_size=8)


def test_num_classes_from_meta_argument_or_labels(small):
    root, _ = small
    with pytest.raises(DatasetError, match=r"meta\.json: num_classes=3 but num_classes=5 was asked for"):
        VTABDataset(root, "s", image_size=8, num_classes=5)
    (root / "meta.json").unlink()
    assert VTABDataset(root, "s", image_size=8).num_classes == 3  # max label + 1
    ds = VTABDataset(root, "s", image_size=8, num_classes=7)
    assert ds.num_classes == 7 and ds.classes == [str(i) for i in range(7)]


def _noah_folder(root, n=8, num_classes=4):
    """A folder laid out like the NOAH VTAB-1k release: JPEGs in nested folders, no meta.json."""
    rng = np.random.default_rng(1)
    (root / "images" / "train set").mkdir(parents=True)
    labels = [i % num_classes for i in range(n)]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
            root / "images" / "train set" / f"{i}.jpg"
        )
    rows = [f"images/train set/{i}.jpg {labels[i]}" for i in range(n)]
    for split, sl in {
        "train800": slice(0, 4),
        "val200": slice(4, 6),
        "train800val200": slice(0, 6),
        "test": slice(6, 8),
    }.items():
        (root / f"{split}.txt").write_text("\n".join(rows[sl]) + "\n")
    return labels


def test_real_vtab_layout_and_import(tmp_path):
    src = tmp_path / "vtab-1k" / "caltech101"
    labels = _noah_folder(src)
    ds = VTABDataset(src, "train800val200", image_size=32, cache=True)  # non-square JPEGs, paths with spaces
    assert ds.num_classes == 4 and ds.labels == labels[:6] and ds[0][0].shape == (3, 32, 32)
    meta = import_vtab_folder(src, tmp_path / "results" / "data" / "caltech101", name="caltech101")
    assert meta["kind"] == "vtab" and meta["num_classes"] == 4 and meta["counts"]["test"] == 2
    registered = VTABDataset(
        tmp_path / "results" / "data" / "caltech101", "train800val200", image_size=32, cache=True
    )
    assert registered.labels == ds.labels and torch.equal(registered.pixels(), ds.pixels())
    (src / "images" / "train set" / "7.jpg").unlink()
    with pytest.raises(DatasetError, match=r"test\.txt:2: image not found"):
        import_vtab_folder(src, tmp_path / "again", name="caltech101")
    assert not (tmp_path / "again").exists()
