"""Shared test configuration: markers, tiny-model helpers, GPU skipping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import (
    ARCH,
    COMMON,
    MEASURE_KWARGS,
    PRUNE_TINY,
    ROOT,
    STAGE_TINY,
    TRAIN,
    colour_images,
    smoke_snakemake,
    write_colour_task,
)
from petlprune.cli import main
from petlprune.data.writer import write_split_folder
from petlprune.methods import Plan, get
from petlprune.models.backbone import create_backbone, save_backbone
from petlprune.models.build import build_model, save_task_model

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


# ------------------------------------------------------------------------- shared stage fixtures
# (a module-scoped fixture is built once per test module that uses it)
@pytest.fixture(scope="module")
def task(tmp_path_factory):
    images, labels = colour_images(60, 3, seed=0)
    out = tmp_path_factory.mktemp("data") / "colours"
    write_split_folder(out, images, labels,
                       {"train800": np.arange(0, 32), "val200": np.arange(32, 40),
                        "train800val200": np.arange(0, 40), "test": np.arange(40, 60)},
                       ["r", "g", "b"], {"seed": 0, "kind": "embedded", "description": "test colours"})
    return out


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    images, labels = colour_images(48, 4, seed=1)
    root = tmp_path_factory.mktemp("source")
    write_split_folder(root / "fractal", images, labels, {"train": np.arange(0, 40), "test": np.arange(40, 48)},
                       ["a", "b", "c", "d"], {"seed": 1, "kind": "source", "description": "test source"})
    out = root / "backbone" / "tiny.pt"
    main(["pretrain", "--out", str(out), "--timm-model", ARCH, "--timm-kwargs", json.dumps(STAGE_TINY),
          "--weights", "pretrain", "--data", str(root / "fractal"), "--train", json.dumps(TRAIN),
          "--seed", "0", "--threads", "1", "--device", "cpu"])
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny VTAB-layout task, a random tiny backbone and a fine-tuned adapter model."""
    root = tmp_path_factory.mktemp("study")
    task = write_colour_task(root / "data" / "colours")
    backbone = root / "backbone" / "tiny.pt"
    main(["pretrain", "--out", str(backbone), "--timm-model", ARCH, "--timm-kwargs", json.dumps(PRUNE_TINY),
          "--weights", "random", "--seed", "0", "--threads", "1"])
    run = root / "runs" / "colours" / "adapter" / "seed0"
    main(["finetune", "--data", str(task), "--backbone", str(backbone), "--petl", "adapter",
          "--train", json.dumps(TRAIN), "--seed", "0", "--out", str(run / "finetune"), *COMMON])
    return {"task": task, "backbone": backbone, "run": run, "model": run / "finetune" / "model.pt"}


@pytest.fixture()
def task_dirs(tmp_path):
    torch.manual_seed(0)
    backbone = tmp_path / "backbone.pt"
    save_backbone(backbone, create_backbone("vit_tiny_patch16_224", MEASURE_KWARGS, num_classes=1),
                  timm_model="vit_tiny_patch16_224", timm_kwargs=MEASURE_KWARGS, mean=[0.5] * 3, std=[0.5] * 3)
    dirs = {"finetune": tmp_path / "finetune", "pruned": tmp_path / "pruned" / "last_k-d2"}
    model = build_model(backbone, petl="adapter", num_classes=5)
    save_task_model(dirs["finetune"] / "model.pt", model, backbone=backbone, petl="adapter",
                    petl_options=None, num_classes=5)
    plan = Plan("last_k", "d2", 2, [0, 1])
    model = get("last_k").apply(build_model(backbone, petl="adapter", num_classes=5), plan)
    save_task_model(dirs["pruned"] / "model.pt", model, backbone=backbone, petl="adapter",
                    petl_options=None, num_classes=5, plan=plan)
    return backbone, dirs



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
