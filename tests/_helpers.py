"""Helpers several test modules share (not a test module: no test module imports another).

Fixtures live in tests/conftest.py; plain functions and constants here. Imported as ``from _helpers import
...`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from petlprune.cli import main
from petlprune.methods import ScoringContext
from petlprune.models.petl import inject_petl, mark_trainable

ROOT = Path(__file__).resolve().parents[1]
ARCH = "vit_tiny_patch16_224"
# the stages' re-training recipe of the stage tests (tests/test_train_stages.py, tests/test_stages_prune.py)
TRAIN = {"epochs": 2, "lr": 0.003, "weight_decay": 0.0001, "warmup_epochs": 1, "batch_size": 16}
COMMON = ["--threads", "1", "--device", "cpu"]


# ------------------------------------------------------------------------------------ tiny tasks
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


def colour_images(n, classes, seed):
    """Class-coloured noise: learnable, cheap."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    colours = rng.integers(0, 256, size=(classes, 3))
    images = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 40, (n, 16, 16, 3)), 0, 255)
    return images.astype(np.uint8), labels


# ------------------------------------------------------------------------------------ stage runs
STAGE_TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 3, "num_heads": 2}  # the pretrain/finetune stage tests' backbone
PRUNE_TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}  # the score/plan/prune stage tests' backbone
MEASURE_KWARGS = {"img_size": 16, "patch_size": 8, "embed_dim": 12, "depth": 3, "num_heads": 2}  # the measure stage tests' backbone


def finetune_cli(task, backbone, out, *extra, petl="adapter", options="{}"):
    return main(["finetune", "--data", str(task), "--backbone", str(backbone), "--petl", petl,
                 "--petl-options", options, "--train", json.dumps(TRAIN), "--seed", "1", "--threads", "1",
                 "--out", str(out), "--device", "cpu", *extra])


def prune_cli(r, plan, out, *extra):
    main(["prune", "--model", str(r["model"]), "--backbone", str(r["backbone"]), "--plan", str(plan),
          "--data", str(r["task"]), "--train", json.dumps(TRAIN), "--seed", "0", "--out", str(out), *COMMON, *extra])
    return json.loads((out / "metrics.json").read_text())


# ------------------------------------------------------------------ importance criteria, baselines
class Negate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


def tiny_vit(depth: int = 4) -> nn.Module:
    import timm  # after petlprune (its compat step), which the import above has run

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=32, depth=depth, num_heads=2, num_classes=5)


def tiny_loader(batches: int = 2, batch_size: int = 3, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, 5, (batch_size,), generator=g))
            for _ in range(batches)]


# ------------------------------------------------------------------------------------------- SGLP
SGLP_DEPTH = 6


def sglp_tiny_vit(seed: int = 0) -> nn.Module:
    """A 6-block PETL (adapter) ViT on 16×16 images, task weights randomised so every gradient is non-zero."""
    import timm  # after petlprune (its compat step), which the imports above have run

    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, embed_dim=16,
        depth=SGLP_DEPTH, num_heads=2, num_classes=3,
    )
    inject_petl(model, "adapter", bottleneck=4)
    mark_trainable(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return model.eval()


def tiny_data(n: int = 30, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g))


def two_batches(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ds = tiny_data(16, seed)
    return [(ds.tensors[0][:8], ds.tensors[1][:8]), (ds.tensors[0][8:], ds.tensors[1][8:])]


def reference_finetuned(model: nn.Module, kept: list[int], batches, seed: int = 0) -> tuple[float, float]:
    """Independent finetuned-context G and loss: a hand-built sub-network with the trained head, train
    mode, every weight unfrozen, ``.backward()`` per batch after ``zero_grad``, the norm of the ``.grad``
    fields per batch, averaged."""
    net = copy.deepcopy(model)
    net.blocks = nn.Sequential(*[net.blocks[i] for i in kept])
    net.requires_grad_(True).train()
    norms, losses = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for x, y in batches:
            net.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            norms.append(math.sqrt(sum(float(p.grad.double().square().sum()) for p in net.parameters() if p.grad is not None)))
            losses.append(float(loss.detach()))
    return float(np.mean(norms)), float(np.mean(losses))


def cls_features(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        outs = model.forward_intermediates(images, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True)
    return np.stack([prefix[:, 0].numpy() for _, prefix in outs])  # (L, n, d)


def make_context(**options) -> ScoringContext:
    model, ds = sglp_tiny_vit(), tiny_data(24)
    loader = DataLoader(ds, batch_size=8, shuffle=False)
    feats = {"cls": cls_features(model, ds.tensors[0]), "labels": ds.tensors[1].numpy()}
    return ScoringContext(model=model, features=feats, labels=feats["labels"], loader=loader, seed=0, options=options)


# ------------------------------------------------------------------------------------ paper tier
VTAB_SPLITS = {"train800": slice(0, 3), "val200": slice(3, 4), "train800val200": slice(0, 4), "test": slice(4, 6)}
VTAB_CLASSES = {
    "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37, "svhn": 10,
    "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
    "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
    "smallnorb_azi": 18, "smallnorb_ele": 9,
}


def make_fake_vtab(root: Path, classes: dict[str, int], n: int = 6, seed: int = 0) -> Path:
    """A VTAB-1k tree in the NOAH layout: ``{root}/{task}/images/*.jpg``, the four list files per task
    (labels cycling over the task's classes) and ``{root}/SHA256SUMS`` over the list files."""
    rng = np.random.default_rng(seed)
    lines = []
    for task, k in classes.items():
        d = root / task
        (d / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            # Non-square, not 224: the loader must resize.
            Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(d / "images" / f"{i:04d}.jpg")
            rows.append(f"images/{i:04d}.jpg {i % k}")
        for split, rows_of in VTAB_SPLITS.items():
            (d / f"{split}.txt").write_text("\n".join(rows[rows_of]) + "\n")
            digest = hashlib.sha256((d / f"{split}.txt").read_bytes()).hexdigest()
            lines.append(f"{digest}  {task}/{split}.txt")
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return root


def paper_config_for(vtab: Path, out: Path) -> Path:
    """paper.yaml with its data root, manifest and results moved into the test's folders."""
    cfg = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
    cfg["data"]["root"] = str(vtab)
    cfg["data"]["manifest"] = str(vtab / "SHA256SUMS")
    cfg["results"] = str(out / "results-paper")
    path = out / "paper.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def score_cli(r, method, options="{}", features=None):
    out = r["run"] / "score" / f"{method}.json"
    main(["score", "--method", method, "--model", str(r["model"]), "--backbone", str(r["backbone"]),
          "--data", str(r["task"]), "--features", str(features or r["run"] / "features.npz"), "--options", options,
          "--seed", "0", "--out", str(out), *COMMON])
    return out


def plan_cli(r, method, budget, *extra):
    out = r["run"] / "plan" / f"{method}-{budget}.json"
    main(["plan", "--method", method, "--scores", str(r["run"] / "score" / f"{method}.json"),
          "--budget", budget, "--out", str(out), *extra])
    return out


def snakemake_dry_run(config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """``snakemake -n`` of a config dict (tests/test_config.py's bad-input matrix and the new-method tests)."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(cfg),
         "--directory", str(ROOT), "-s", str(ROOT / "Snakefile")],
        capture_output=True, text=True, timeout=120,
    )


def smoke() -> dict:
    """The smoke tier's config, as a dict to alter."""
    return yaml.safe_load((ROOT / "workflow/config/smoke.yaml").read_text())


def set_key(cfg: dict, dotted: str, value) -> dict:
    """A deep copy of ``cfg`` with the dotted key set (the bad-config tests)."""
    cfg = copy.deepcopy(cfg)
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    node[last] = value
    return cfg


def ss(seg: np.ndarray) -> float:
    """Within-segment sum of squares."""
    return float(np.square(seg - seg.mean()).sum())


def brute_force(values: np.ndarray, k: int) -> tuple[float, list[tuple[int, int]]]:
    """Every placement of k - 1 cuts; the split of least total within-segment sum of squares."""
    from itertools import combinations

    n = len(values)
    best = (np.inf, [])
    for cuts in combinations(range(1, n), k - 1):
        bounds = [0, *cuts, n]
        segs = list(zip(bounds[:-1], bounds[1:], strict=True))
        loss = sum(ss(values[a:b]) for a, b in segs)
        if loss < best[0]:
            best = (loss, segs)
    return best


def smoke_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """``snakemake`` on the smoke config, run in ``workdir`` with this checkout's Snakefile."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(ROOT / "workflow/config/smoke.yaml"), *args],
        capture_output=True, text=True, timeout=1500,
    )
