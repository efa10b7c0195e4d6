"""Shared test configuration: markers, tiny-model helpers, GPU skipping."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def server(tmp_path: Path):
    """A warm worker (petlprune/worker.py) with a light preload, for this test process; yields its
    socket path and process."""
    path = str(tmp_path / "socket")
    proc = subprocess.Popen([sys.executable, "-m", "petlprune.worker", path, str(os.getpid()), "petlprune.cli"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        assert proc.poll() is None and time.monotonic() < deadline, "the worker did not come up"
        time.sleep(0.05)
    yield path, proc
    if os.path.exists(path):
        os.unlink(path)
    proc.wait(timeout=10)


def write_colour_task(task, n: int = 75):
    """A tiny 3-class VTAB-layout task of noisy colour patches (train800 36, val200 9, test 30 of 75).

    Args:
        task: folder to write (``images/``, list files, ``meta.json``).
        n: images in all.
    """
    import numpy as np

    from petlprune.data.writer import write_split_folder

    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    colours = rng.integers(0, 256, size=(3, 3))
    images = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 50, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    write_split_folder(task, images, labels,
                       {"train800": np.arange(36), "val200": np.arange(36, 45),
                        "train800val200": np.arange(45), "test": np.arange(45, n)},
                       ["r", "g", "b"], {"seed": 0, "kind": "embedded", "description": "test colours"})
    return task


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory):
    """ONE run of the whole DAG on the smoke tier for the test session, in a scratch copy of the
    workflow's inputs; yields ``(workdir, completed process)``. tests/test_workflow_smoke.py checks the
    run and its results, tests/test_book_browser.py the book it built: a second run would double the
    longest part of the suite.

    ``PETLPRUNE_SMOKE_WORKDIR`` names a folder where this has already run (its book built): the tests
    then read it instead of running again (for a person iterating on the report).
    """
    import shutil

    reuse = os.environ.get("PETLPRUNE_SMOKE_WORKDIR")
    if reuse:
        yield Path(reuse), subprocess.CompletedProcess([], 0, "", "")
        return
    workdir = tmp_path_factory.mktemp("smoke")
    shutil.copytree(ROOT / "notebooks", workdir / "notebooks")
    shutil.copytree(ROOT / "book", workdir / "book", ignore=shutil.ignore_patterns("_build", "generated"))
    yield workdir, smoke_snakemake(workdir, "--cores", "2")


def smoke_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """``snakemake`` on the smoke config, run in ``workdir`` with this checkout's Snakefile."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(ROOT / "workflow/config/smoke.yaml"), *args],
        capture_output=True, text=True, timeout=1500,
    )

