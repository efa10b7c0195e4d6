"""The import contracts (pyproject.toml, [tool.importlinter]) hold, and the module graph has no cycle.

Run inside the README's test command, so a broken layer fails `pytest` as it fails `.ci/run`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import import_graph  # noqa: E402  (benchmarks/import_graph.py: a script, not a test module)


def test_lint_imports_keeps_every_contract() -> None:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: pip install -e '.[test]' installs import-linter")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_the_package_has_no_import_cycle() -> None:
    found = import_graph.cycles(import_graph.import_graph())
    assert found == [], f"import cycles (strongly connected modules): {found}"


def test_cycle_finder_finds_a_known_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_graph.cycles(graph) == [["a", "b", "c"]]


def test_torch_free_layers_import_without_torch() -> None:
    code = ("import sys; import petlprune.core.budgets, petlprune.core.petl, petlprune.core.formats, "
            "petlprune.core.splits, petlprune.tier, petlprune.report, petlprune.stages.plan, petlprune.cli; "
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
