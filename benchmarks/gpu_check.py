"""The GPU check of a lent machine: does the paper tier run on CUDA, and how fast (under 8 minutes).

    sh benchmarks/gpu_check.sh            # = python benchmarks/gpu_check.py --results results

Steps, each timed; a failing step is recorded (and the exit status is 1), the others still run:
    1. ``pytest -m gpu``: every method's score -> plan -> prune -> measure on CUDA, and the GPU path;
    2. the rehearsal (``benchmarks/rehearsal.py``) at the paper's real depth (12 blocks) on one task with
       a small subset, through the real DAG (snakemake), measure on CUDA;
    3. bf16 training throughput of ViT-B/16 + adapter at batch 64 (the fine-tuning recipe's step);
    4. inference throughput of the unpruned ViT-B/16 and of an SLS depth-6 model (its first 6 blocks) at
       batch 1 and 256, with the study's own timer (``petlprune.measure.throughput``);
    5. peak GPU memory of each measurement.
It prints a table and writes ``{results}/benchmarks-suite/gpu_check.json``, which the book's page
"Reliability and performance" shows, and which ``petlprune cost --gpu-check`` reads (per-job seconds
of fine-tuning and re-training: epochs x 1000 images / the measured training throughput).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _suite
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
NAME = "gpu_check"
TRAIN_IMAGES = 1000  # VTAB-1k's train800val200: the images of one fine-tuning epoch


def require_cuda() -> str:
    """The GPU's name; a clean exit (status 2) without CUDA."""
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
                         "run it on a GPU machine (sh benchmarks/gpu_check.sh)")
    return torch.cuda.get_device_name(0)


def _vit_b(depth: int | None = None, petl: str | None = None):
    from petlprune.models.backbone import create_backbone
    from petlprune.models.petl import inject_petl, mark_trainable

    model = create_backbone("vit_base_patch16_224", {} if depth is None else {"depth": depth}, num_classes=100)
    if petl is not None:
        opts = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())["petl"]["options"][petl]
        mark_trainable(inject_petl(model, petl, **opts), petl)
    return model


def train_throughput(batch_size: int = 64, steps: int = 20, warmup: int = 5) -> dict[str, Any]:
    """bf16-autocast training steps of ViT-B/16 + adapter (AdamW on the trainable parameters)."""
    import torch.nn.functional as F

    from petlprune.train import _autocast

    dev = torch.device("cuda")
    model = _vit_b(petl="adapter").to(dev).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(batch_size, 3, 224, 224, device=dev)
    y = torch.randint(0, 100, (batch_size,), device=dev)
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with _autocast(dev):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"measurement": "train bf16, ViT-B/16 + adapter", "batch": batch_size,
            "images_per_s": batch_size * steps / seconds, "latency_ms": 1000 * seconds / steps,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}


def inference_throughput(depth: int | None, batch_size: int) -> dict[str, Any]:
    """The study's timer (``petlprune.measure.throughput``) on ViT-B/16 or its first ``depth`` blocks."""
    from petlprune.measure import throughput

    model = _vit_b(depth=depth).cuda()
    torch.cuda.reset_peak_memory_stats()
    got = throughput(model, batch_size, warmup=10, repeats=30 if batch_size > 1 else 100)
    label = "inference, ViT-B/16 unpruned" if depth is None else f"inference, SLS depth {depth}"
    return {"measurement": label, "batch": batch_size, "images_per_s": got["images_per_s"],
            "latency_ms": got["latency_ms"], "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}


def run_pytest(timeout: int = 240) -> dict[str, Any]:
    """``pytest -m gpu`` in a subprocess; its pass/fail/skip counts."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", tail[0])}
    return {"ok": done.returncode == 0, "seconds": time.perf_counter() - t0, "summary": tail[0], **counts,
            "output_tail": (done.stdout + done.stderr)[-4000:] if done.returncode else ""}


def run_rehearsal(workdir: Path, task: str = "eurosat", images: int = 48, cores: int = 16,
                  timeout: int = 300) -> dict[str, Any]:
    """paper.yaml at its 12 blocks on one task, through snakemake, measured on CUDA."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from rehearsal import prepare

    cfg = prepare(workdir, depth=None, tasks=[task], n_images=images, device="cuda", threads=2)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), "--configfile", str(cfg), "--cores", str(cores), "--keep-going"],
                          capture_output=True, text=True, timeout=timeout)
    text = done.stdout + done.stderr
    steps = re.findall(r"(\d+) of (\d+) steps \((\d+)%\) done", text)
    return {"ok": done.returncode == 0 and (workdir / "book/_build/html/index.html").is_file(),
            "seconds": time.perf_counter() - t0, "task": task, "images": images,
            "jobs_done": int(steps[-1][0]) if steps else 0, "jobs": int(steps[-1][1]) if steps else None,
            "output_tail": "" if done.returncode == 0 else text[-4000:]}


def per_job_seconds(train_images_per_s: float) -> dict[str, float]:
    """Seconds of one fine-tuning / re-training job of paper.yaml at the measured training speed
    (training passes only: evaluation and data loading come on top)."""
    paper = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
    return {rule: paper[key]["epochs"] * TRAIN_IMAGES / train_images_per_s
            for rule, key in (("finetune", "finetune"), ("prune", "retrain"))}


def table_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The printed (and rendered) rows: one per measurement."""
    return [{k: r.get(k) for k in ("measurement", "batch", "images_per_s", "latency_ms", "peak_mem_gb")}
            for r in doc["throughput"]]


def _step(name: str, fn, *args, **kwargs) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 (a failed step is a result: recorded, the others still run)
        return {"ok": False, "error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - t0,
                "step": name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _suite.add_common_arguments(parser)
    parser.add_argument("--skip", nargs="*", default=[], choices=["pytest", "rehearsal", "throughput"])
    parser.add_argument("--workdir", type=Path, default=None, help="rehearsal folder (default: a temporary one)")
    args = parser.parse_args(argv)
    gpu = require_cuda()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    doc: dict[str, Any] = {"gpu": gpu, "cuda": torch.version.cuda, "throughput": []}
    if "throughput" not in args.skip:
        doc["throughput"].append(_step("train", train_throughput))
        for depth in (None, 6):
            for b in (1, 256):
                doc["throughput"].append(_step("inference", inference_throughput, depth, b))
        train = doc["throughput"][0]
        if "images_per_s" in train:
            doc["per_job_seconds"] = per_job_seconds(train["images_per_s"])
        doc["peak_mem_gb"] = max((r.get("peak_mem_gb") or 0.0) for r in doc["throughput"])
    if "pytest" not in args.skip:
        doc["pytest"] = _step("pytest", run_pytest)
    if "rehearsal" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            doc["rehearsal"] = _step("rehearsal", run_rehearsal, args.workdir or Path(tmp) / "rehearsal")
    doc["seconds"] = time.perf_counter() - t0
    print(format_report(doc))
    _suite.write_result(args, NAME, doc, load)
    failed = [s for s in ("pytest", "rehearsal") if s in doc and not doc[s].get("ok")]
    failed += [r["step"] for r in doc["throughput"] if r.get("ok") is False]
    return 1 if failed else 0


def format_report(doc: dict[str, Any]) -> str:
    """The table and the lines of the pytest and rehearsal steps."""
    lines = [f"GPU check on {doc.get('gpu')} (CUDA {doc.get('cuda')}), {doc.get('seconds', 0):.0f} s",
             _suite.format_table([r for r in table_rows(doc) if r.get("images_per_s") is not None])]
    lines += [f"failed: {r['step']}: {r['error']}" for r in doc["throughput"] if r.get("ok") is False]
    if "pytest" in doc:
        p = doc["pytest"]
        lines.append(f"pytest -m gpu: {'ok' if p.get('ok') else 'FAILED'}: {p.get('summary') or p.get('error')} "
                     f"({p['seconds']:.0f} s)")
    if "rehearsal" in doc:
        r = doc["rehearsal"]
        lines.append(f"rehearsal (12 blocks, 1 task): {'ok' if r.get('ok') else 'FAILED'}: "
                     f"{r.get('jobs_done', '?')} of {r.get('jobs', '?')} jobs in {r['seconds']:.0f} s"
                     + (f"; {r['error']}" if r.get("error") else ""))
    if doc.get("per_job_seconds"):
        lines.append("per job (training only): " + ", ".join(f"{k} {v / 60:.1f} min"
                                                             for k, v in doc["per_job_seconds"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
