"""The paper tier at its real shape, on data that can be made anywhere: a rehearsal of paper.yaml.

``rehearsal_config`` derives a config from ``workflow/config/paper.yaml``: the same backbone
(``vit_base_patch16_224``: width 768, 12 heads x 64, patch 16, 224 px input, 197 tokens) with fewer
blocks and random weights, every stage and every method instance of paper.yaml, on a fake VTAB-1k
tree in the NOAH layout (``make_fake_vtab``: a dozen JPEGs per task, one task grayscale, every list
file, a SHA256SUMS manifest). What is cut is cost, never shape: epochs, images, seeds, budgets per
method (the first of each), random draws (one), the SPA family's schedules (the first density, in 2
steps), t-SNE perplexity (below the image count), timing repeats. ``tests/test_paper_rehearsal.py`` runs it
on the CPU; ``benchmarks/gpu_check.py`` at the paper's full depth on a GPU.

    python benchmarks/rehearsal.py OUT [--depth 4] [--tasks eurosat smallnorb_ele] [--device cpu]
    # then: snakemake -s Snakefile --directory OUT --configfile OUT/rehearsal.yaml --cores 2
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["ROOT", "GRAYSCALE", "make_fake_vtab", "rehearsal_config", "prepare"]

ROOT = Path(__file__).resolve().parents[1]
# VTAB-1k tasks whose images are grayscale in the NOAH release (the loader must give them 3 channels).
GRAYSCALE = ("smallnorb_azi", "smallnorb_ele", "dsprites_loc", "dsprites_ori")
LISTS = ("train800", "val200", "train800val200", "test")


def _split_rows(n: int) -> dict[str, slice]:
    """NOAH's shape in small: train800 (1/2), val200 (1/6), train800val200 (their union), test (the rest)."""
    train, val = n // 2, max(2, n // 6)
    return {"train800": slice(0, train), "val200": slice(train, train + val),
            "train800val200": slice(0, train + val), "test": slice(train + val, n)}


def make_fake_vtab(root: Path, classes: dict[str, int], n: int = 12, seed: int = 0) -> Path:
    """A VTAB-1k tree in the NOAH layout under ``root``.

    Args:
        root: the folder to create (``{root}/{task}/images/*.jpg``, ``{root}/{task}/{list}.txt``).
        classes: task -> number of classes. Labels cycle over the first ``min(k, max(2, n // 4))`` of
            them, so that every split holds a class more than once (SLS's silhouette needs fewer
            classes than images) while the head keeps the task's real class count (paper.yaml's
            ``num_classes``: a class absent from the few images is what VTAB-1k can do too).
        n: images per task; tasks in :data:`GRAYSCALE` get single-channel JPEGs.
        seed: pixel seed.

    Returns:
        ``root``; ``{root}/SHA256SUMS`` covers every image and list file (sha256sum format).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    sums = []
    for task, k in classes.items():
        d = root / task
        (d / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        present = min(k, max(2, n // 4))
        for i in range(n):
            gray = task in GRAYSCALE
            shape = (96, 120) if gray else (96, 120, 3)  # not square, not 224: the loader resizes
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), "L" if gray else "RGB").save(
                d / "images" / f"{i:04d}.jpg", quality=90)
            rows.append(f"images/{i:04d}.jpg {i % present}")
        for split, rows_of in _split_rows(n).items():
            (d / f"{split}.txt").write_text("\n".join(rows[rows_of]) + "\n")
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            sums.append(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(root).as_posix()}")
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return root


def _within(budget: str, depth: int | None) -> str:
    """A depth budget past the cut backbone's depth becomes its full depth: paper.yaml's ``d12`` (every
    block: the unpruned controls) is ``d4`` on 4 blocks, the same meaning at the rehearsal's shape; ``s8``
    (attention sub-layers removed, 8 of 12) is ``s3`` on 4."""
    if depth and budget.startswith("d") and budget[1:].isdigit() and int(budget[1:]) > depth:
        return f"d{depth}"
    # attention sub-layers removed (attn_drop): the same share of the blocks, at least one
    if depth and budget.startswith("s") and budget[1:].isdigit() and int(budget[1:]) > depth - 1:
        return f"s{max(1, round(int(budget[1:]) * depth / 12))}"
    return budget


def rehearsal_config(vtab: Path, results: Path, depth: int | None = 4, tasks: list[str] | None = None,
                     n_images: int = 12, device: str = "cpu", threads: int = 1) -> dict[str, Any]:
    """paper.yaml, cut in cost but not in shape (see the module docstring).

    Args:
        vtab: the fake VTAB-1k root (``make_fake_vtab``).
        results: the results folder of the rehearsal.
        depth: blocks of the ViT-B/16 (None: paper.yaml's 12).
        tasks: VTAB-1k tasks to run (default: one RGB and one grayscale task).
        n_images: images per task (t-SNE perplexity is set below the scoring split's size).
        device: where measure times (paper.yaml: cuda).
        threads: torch threads of every job (one per core keeps two jobs running on two cores).
    """
    paper = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
    cfg = copy.deepcopy(paper)
    tasks = list(tasks or ["eurosat", "smallnorb_ele"])
    unknown = sorted(set(tasks) - set(paper["data"]["num_classes"]))
    if unknown:
        raise ValueError(f"rehearsal tasks {unknown} are not paper.yaml tasks")
    cfg["results"] = str(results)
    cfg["threads"] = threads
    cfg["seeds"] = paper["seeds"][:1]
    cfg["data"].update(root=str(vtab), manifest=str(vtab / "SHA256SUMS"), tasks=tasks,
                       num_classes={t: paper["data"]["num_classes"][t] for t in tasks})
    bb = cfg["backbone"]
    bb["name"] = f"vitb16-d{depth or 12}-random"
    bb["timm_model"] = "vit_base_patch16_224"  # the architecture of paper.yaml's tag, without its weights
    bb["timm_kwargs"] = {**bb.get("timm_kwargs", {}), **({"depth": int(depth)} if depth else {})}
    bb["weights"], bb["checkpoint"] = "random", None
    for stage in ("finetune", "retrain"):
        cfg[stage].update(epochs=1, warmup_epochs=0)
    scoring = _split_rows(n_images)["train800val200"]
    for instance, opts in cfg["methods"].items():
        method = opts.get("method", instance)
        if method == "sls":
            opts["perplexity"] = min(opts.get("perplexity", 30), max(2, (scoring.stop - scoring.start - 1) // 3))
        if "draws" in opts:
            opts["draws"] = 1
        # The SPA family: its first density only, reached in 2 steps (one recovery of one batch); each
        # step of paper.yaml's schedule (5%, to 10%) trains a whole pass, too slow for 2 CPU cores.
        if method in ("spa", "fine_pruning"):
            opts.update(densities=[0.5], step=0.25, recover_batches=1)
        if method == "spa_block":
            opts.update(densities=[0.5], steps=2)
    cfg["budgets"] = {m: [_within(bs[0], depth)] for m, bs in cfg["budgets"].items()}
    cfg["measure"] = {"batch_sizes": [1, 2], "warmup": 0, "repeats": 2, "device": device}  # the count pass warms up
    # paper.yaml's per-rule resources (GPUs, memory, runtimes) kept; threads one per job.
    cfg["resources"] = {rule: {**res, "threads": threads} for rule, res in cfg.get("resources", {}).items()}
    return cfg


def prepare(workdir: Path, **kwargs: Any) -> Path:
    """A snakemake working directory: notebooks and book copied, fake VTAB, ``rehearsal.yaml``; its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    for folder in ("notebooks", "book"):
        if not (workdir / folder).exists():
            shutil.copytree(ROOT / folder, workdir / folder, ignore=shutil.ignore_patterns("_build", "generated"))
    tasks = kwargs.get("tasks") or ["eurosat", "smallnorb_ele"]
    paper = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
    vtab = make_fake_vtab(workdir / "vtab-1k", {t: paper["data"]["num_classes"][t] for t in tasks},
                          n=kwargs.get("n_images", 12))
    cfg = rehearsal_config(vtab, workdir / "results-rehearsal", **kwargs)
    path = workdir / "rehearsal.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--depth", type=int, default=4, help="ViT-B/16 blocks (0: the paper's 12)")
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--images", type=int, default=12, help="images per task")
    parser.add_argument("--device", default="cpu", help="measure device")
    parser.add_argument("--threads", type=int, default=1)
    a = parser.parse_args(argv)
    print(prepare(a.workdir, depth=a.depth or None, tasks=a.tasks, n_images=a.images, device=a.device,
                  threads=a.threads))


if __name__ == "__main__":
    main()
