"""The data stages through the CLI (exact arguments the rules use), the gallery and the probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from petlprune.cli import main
from petlprune.data.probe import raw_pixel_probe
from petlprune.data.writer import write_split_folder


def test_data_source_gallery_probe_cli(tmp_path, capsys):
    task = tmp_path / "data" / "dsprites_loc"
    assert (
        main(
            [
                "data",
                "--task",
                "dsprites_loc",
                "--out",
                str(task),
                "--seed",
                "0",
                "--image-size",
                "16",
                "--sizes",
                "train800=40,val200=8,test=32",
            ]
        )
        == 0
    )
    meta = json.loads((task / "meta.json").read_text())
    assert meta["counts"] == {"train800": 40, "val200": 8, "train800val200": 48, "test": 32}
    src = tmp_path / "source" / "fractal"
    assert (
        main(
            [
                "source",
                "--out",
                str(src),
                "--seed",
                "0",
                "--classes",
                "3",
                "--train-per-class",
                "4",
                "--test-per-class",
                "2",
                "--image-size",
                "16",
            ]
        )
        == 0
    )
    assert json.loads((src / "meta.json").read_text())["counts"] == {"train": 12, "test": 6}
    png = tmp_path / "data" / "gallery.png"
    assert main(["gallery", "--out", str(png), str(task), str(src)]) == 0
    with Image.open(png) as img:
        assert img.size[0] > 200 and img.size[1] > 100
    out = tmp_path / "probe.json"
    assert main(["probe", "--out", str(out), str(task)]) == 0
    result = json.loads(out.read_text())
    row = result["tasks"][0]
    assert (
        row["task"] == "dsprites_loc"
        and row["num_classes"] == 16
        and row["n_train"] == 48
        and row["n_test"] == 32
    )
    test_labels = [int(line.split()[1]) for line in (task / "test.txt").read_text().splitlines()]
    assert row["chance"] == pytest.approx(np.bincount(test_labels).max() / 32)
    assert 0 <= row["probe_top1"] <= 1
    assert result["provenance"]["argv"][:2] == ["petlprune", "probe"]
    printed = capsys.readouterr().out
    assert "data: dsprites_loc: 16 classes" in printed and "probe top-1" in printed


def test_data_stage_argument_errors(tmp_path):
    with pytest.raises(SystemExit, match="needs --seed, --image-size, --sizes"):
        main(["data", "--task", "digits", "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="unknown task 'cifar'"):
        main(
            [
                "data",
                "--task",
                "cifar",
                "--out",
                str(tmp_path / "d"),
                "--seed",
                "0",
                "--image-size",
                "8",
                "--sizes",
                "train800=1,val200=1,test=1",
            ]
        )


def test_probe_known_answers(tmp_path):
    # label = brightness level: linearly separable, so the probe is exact
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    images = (labels[:, None, None, None] * 80 + rng.integers(0, 20, (60, 6, 6, 3))).astype(np.uint8)
    splits = {"train800val200": np.arange(30), "test": np.arange(30, 60)}
    meta = {"seed": 0, "kind": "embedded", "description": "t"}
    write_split_folder(tmp_path / "easy", images, labels, splits, ["a", "b", "c"], meta)
    r = raw_pixel_probe(tmp_path / "easy")
    assert r["probe_top1"] == 1.0 and r["n_train"] == 30 and r["n_test"] == 30
    assert r["chance"] == pytest.approx(10 / 30)
    # pure noise with unbalanced test labels: chance is the majority rate
    noise = rng.integers(0, 256, (60, 6, 6, 3), dtype=np.uint8)
    unbalanced = np.r_[labels[:30], np.zeros(24, int), np.ones(6, int)]
    write_split_folder(tmp_path / "noise", noise, unbalanced, splits, ["a", "b", "c"], meta)
    assert raw_pixel_probe(tmp_path / "noise")["chance"] == pytest.approx(24 / 30)
