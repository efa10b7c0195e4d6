"""``petlprune score`` for the depth-only methods (last_k, random): no model is built, and the scores are
the ones the method gives the real model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch import nn

from petlprune.methods import ScoringContext, get

CHECK = """
import sys
from petlprune.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "a depth-only score imported torch"
sys.exit(code)
"""


def fine_tune_dir(tmp_path: Path, **metrics) -> Path:
    run = tmp_path / "finetune"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"depth": 7, "method": None, "train_split": "train800val200",
                                                 **metrics}))
    return run / "model.pt"  # never read: the test would fail if the stage opened it


def score(model: Path, out: Path, method: str, options: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK, "score", "--method", method, "--model", str(model),
                           "--backbone", "unused", "--data", "unused", "--features", "unused",
                           "--options", json.dumps(options), "--seed", "3", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("method", "options"), [("last_k", {}), ("random", {"draw": 2})])
def test_depth_only_scores_match_the_model_path_without_importing_torch(tmp_path: Path, method: str,
                                                                       options: dict) -> None:
    model = fine_tune_dir(tmp_path)
    run = score(model, tmp_path / "s.json", method, options)
    assert run.returncode == 0, run.stderr
    written = json.loads((tmp_path / "s.json").read_text())
    reference = get(method).score(ScoringContext(model=SimpleNamespace(blocks=[nn.Identity()] * 7), seed=3,
                                                 options=options))
    assert written["scores"] == reference.values and len(written["scores"]) == 7


def test_depth_only_score_refuses_a_pruned_model_and_a_val_choice_on_a_model_that_saw_val(tmp_path: Path) -> None:
    pruned = fine_tune_dir(tmp_path, method="sls")
    run = score(pruned, tmp_path / "s.json", "last_k", {})
    assert run.returncode != 0 and "already pruned" in run.stderr
    (tmp_path / "finetune" / "metrics.json").write_text(json.dumps({"depth": 7, "train_split": "train800val200"}))
    run = score(pruned, tmp_path / "s.json", "last_k", {}, "--val")
    assert run.returncode != 0 and "has seen val200" in run.stderr
    (tmp_path / "finetune" / "metrics.json").unlink()
    run = score(pruned, tmp_path / "s.json", "last_k", {})
    assert run.returncode != 0 and "metrics.json" in run.stderr


def test_a_stage_holds_numpys_blas_to_its_threads(tmp_path: Path) -> None:
    """The job's --threads reaches the native pools (OpenBLAS would otherwise start one thread per core)."""
    check = (
        "import sys\n"
        "from petlprune.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "from threadpoolctl import threadpool_info\n"
        "import numpy as np\n"
        "np.ones((64, 64)) @ np.ones((64, 64))\n"
        "blas = [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']\n"
        "assert blas and set(blas) == {1}, blas\n"
    )
    model = fine_tune_dir(tmp_path)
    run = subprocess.run([sys.executable, "-c", check, "score", "--method", "last_k", "--model", str(model),
                          "--backbone", "unused", "--data", "unused", "--features", "unused", "--options", "{}",
                          "--seed", "0", "--threads", "1", "--out", str(tmp_path / "s.json")],
                         capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                           "OPENBLAS_NUM_THREADS": "2"})
    assert run.returncode == 0, run.stderr
