"""SGLP's report section (report/sglp_section.py) on a fabricated run: what it draws comes from the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.patches import Rectangle

from petlprune.report.load import ResultsError, RunDir
from petlprune.report.sections import method_section

SEGMENTS = [[0, 2], [2, 5], [5, 6]]


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _run(root: Path, instance: str = "sglp", extra_drop: str | None = None) -> RunDir:
    run = root / "runs" / "t" / "adapter" / "seed0"
    rng = np.random.default_rng(0)
    a = rng.random((6, 6))
    cka = (a + a.T) / 4 + np.eye(6) / 2
    extra = {"cka": cka.tolist(), "segments": SEGMENTS, "losses": [3.0, 1.0, 0.4, 0.3], "k": 3, "k_auto": True,
             "options": {"tokens": "cls"}}
    if extra_drop:
        extra.pop(extra_drop)
    _write(run / "score" / f"{instance}.json", {"method": "sglp", "scores": cka.sum(0).tolist(), "extra": extra})
    for budget, kept, counts in (("matched", [1, 3, 5], [1, 1, 1]), ("d4", [0, 1, 3, 5], [2, 1, 1])):
        _write(run / "plan" / f"{instance}-{budget}.json",
               {"method": "sglp", "budget": budget, "depth": len(kept), "kept_blocks": kept,
                "extra": {"keep_per_segment": counts}})
    return RunDir.locate(root, "t", "adapter", 0)


def test_sglp_section_draws_the_stored_matrix_segments_and_plans(tmp_path):
    run = _run(tmp_path)
    section = dict(method_section(run, "sglp"))
    assert list(section) == [
        "Linear CKA between blocks, with the 3 segments (sglp)",
        "Segmentation loss and the chosen K (sglp)",
        "Blocks kept per segment (sglp)",
    ]
    heat = section["Linear CKA between blocks, with the 3 segments (sglp)"].axes[0]
    stored = json.loads((run.root / "score" / "sglp.json").read_text())["extra"]["cka"]
    np.testing.assert_allclose(heat.images[0].get_array(), np.asarray(stored))
    squares = [(p.get_x(), p.get_width()) for p in heat.patches if isinstance(p, Rectangle)]
    assert squares == [(a - 0.5, b - a) for a, b in SEGMENTS]  # one outline per segment, on the diagonal
    loss_ax = section["Segmentation loss and the chosen K (sglp)"].axes[0]
    assert list(loss_ax.lines[0].get_ydata()) == [3.0, 1.0, 0.4, 0.3]
    assert loss_ax.lines[1].get_xdata()[0] == 3  # the chosen K
    keep_ax = section["Blocks kept per segment (sglp)"].axes[0]
    labels = sorted(t.get_text() for t in keep_ax.texts)
    assert labels == sorted(["1/2", "1/3", "1/1", "2/2", "1/3", "1/1"])
    grid = keep_ax.images[0].get_array()
    assert [int(i) for i in np.flatnonzero(grid[0] == 2.0)] == [1, 3, 5]  # row 0: matched (budget order)
    assert [int(i) for i in np.flatnonzero(grid[1] == 2.0)] == [0, 1, 3, 5]  # row 1: d4

def test_an_instance_is_drawn_by_its_method_section(tmp_path):
    run = _run(tmp_path, instance="sglp_k3")
    titles = [t for t, _ in method_section(run, "sglp_k3")]
    assert titles[0] == "Linear CKA between blocks, with the 3 segments (sglp_k3)"


def test_old_scores_name_the_file(tmp_path):
    run = _run(tmp_path, extra_drop="cka")
    with pytest.raises(ResultsError, match=r"sglp\.json.*lack \['cka'\]"):
        method_section(run, "sglp")
