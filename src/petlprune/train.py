"""One trainer for pretraining, PETL fine-tuning and re-training after pruning; one evaluation function.

AdamW over the parameters that require grad (no weight decay on norms, biases, embeddings and tokens,
as timm groups them), a per-iteration cosine schedule with linear warm-up, bf16 autocast on CUDA (and,
with ``precision: bf16``, on CPUs with native bf16), and a hard stop on a non-finite loss.
Deterministic on CPU for a given seed and thread count.
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "save_predictions",
    "TrainConfig",
    "NonFiniteLossError",
    "fit",
    "evaluate",
    "select_device",
    "most_free_gpu",
    "set_determinism",
    "cosine_warmup",
    "param_groups",
    "peak_memory_mb",
    "PRECISIONS",
    "autocast_dtype",
    "cpu_has_native_bf16",
]

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run must not write metrics."""


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters.

    Args:
        epochs: passes over the loader.
        lr: peak learning rate (after warm-up).
        weight_decay: AdamW decoupled weight decay (not applied to 1-D weights and tokens).
        warmup_epochs: linear warm-up length in epochs (may be fractional), stepped per iteration.
        batch_size: batch size (read by the stages that build the loader).
        label_smoothing: cross-entropy label smoothing.
        grad_clip: max global gradient norm, or None.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU: the study's numbers so far),
            ``"bf16"`` (bf16 autocast on CUDA and on CPUs with native bf16, AVX512-BF16 or AMX;
            fp32 elsewhere, see :func:`autocast_dtype`) or ``"fp32"`` (no autocast anywhere).
    """

    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    batch_size: int
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_epochs": 0 <= self.warmup_epochs <= self.epochs,
            "batch_size": self.batch_size >= 1,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "precision": self.precision in PRECISIONS,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"TrainConfig: invalid {key}={getattr(self, key)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "train config") -> TrainConfig:
        """Build from a mapping; unknown or missing keys are errors naming ``source`` and the key."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(names))})")
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{source}: missing key(s) {', '.join(missing)}")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def most_free_gpu(free_bytes: list[int]) -> int:
    """Index of the GPU with the most free memory (the lowest index on ties)."""
    if not free_bytes:
        raise ValueError("most_free_gpu: no GPU")
    return max(range(len(free_bytes)), key=lambda i: (free_bytes[i], -i))


def select_device(device: str = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else CPU; an explicit CUDA device without CUDA is an error.

    With several visible GPUs (a workstation run with ``--resources gpu=2``; Slurm's ``--gpus=1``
    leaves one visible), ``"auto"`` takes the one with the most free memory, so that concurrent
    jobs spread over the GPUs instead of all landing on ``cuda:0``.
    """
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if count == 1:
            return torch.device("cuda", 0)
        return torch.device("cuda", most_free_gpu([torch.cuda.mem_get_info(i)[0] for i in range(count)]))
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return dev


def set_determinism(seed: int, threads: int | None = None) -> None:
    """Seed Python, NumPy and torch, ask torch for deterministic algorithms, and fix the thread count."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def peak_memory_mb(device: str | torch.device = "cpu") -> float:
    """Peak memory of this process: CUDA allocations on a GPU, else the peak resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def cosine_warmup(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier at ``step`` (0-based): linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's grouping: no decay on 1-D parameters (norms, biases) and on ``model.no_weight_decay()``."""
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    return [g for g in groups if g["params"]]


PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags).

    Without it, oneDNN emulates bf16 matmuls, slower than fp32: the trainer then stays fp32.
    ``cpuinfo`` is the text of /proc/cpuinfo (for tests); unreadable (not Linux) means no.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: fp32, no autocast).

    ``auto`` keeps what the study always did (bf16 on CUDA only); ``bf16`` adds CPUs with native
    bf16 (book/reliability.md, "Performance": speed and the paired accuracy effect on this tier).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "fp32":
        return None
    if kind == "cuda":
        return torch.bfloat16
    if kind == "cpu" and precision == "bf16" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


@contextmanager
def _autocast(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """Autocast as ``precision`` says. bf16 on a CPU also picks the math attention kernel: the CPU's
    fused (flash) attention backward in bf16 took 1.6 s of a 3.3 s six-step profile, 10x its fp32
    time (benchmarks/roofline.py), and made bf16 training slower than fp32."""
    dtype = autocast_dtype(precision, device)
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        if dtype is not None and device.type == "cpu":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.MATH]):
                yield
        else:
            yield


def fit(
    model: nn.Module,
    loader: Any,
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    loss_fn: LossFn | None = None,
    log: Callable[[str], Any] | None = print,
) -> list[dict[str, Any]]:
    """Train the parameters that require grad.

    Args:
        model: the model; only parameters with ``requires_grad`` are optimised.
        loader: yields ``(x, y)`` batches.
        cfg: hyper-parameters.
        device: where to train.
        seed: seeds torch's RNG (dropout) at the start, so a fit is reproducible on its own.
        loss_fn: ``loss_fn(logits, y, x)`` replacing cross-entropy (e.g. with distillation).
        log: called with one progress line per epoch (None: silent).

    Returns:
        Per-epoch history: ``{"epoch", "loss", "lr", "train_top1", "seconds"}``.

    Raises:
        NonFiniteLossError: the loss was NaN/inf; names the epoch and the step.
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("fit: the model has no parameter with requires_grad=True")
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("fit: the loader is empty")
    torch.manual_seed(seed)
    model.to(device)
    trainable = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_warmup(s, total, warmup))
    criterion = loss_fn or (lambda logits, y, x: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing))
    history: list[dict[str, Any]] = []
    model.train()
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        losses, correct, seen = [], torch.zeros((), device=device, dtype=torch.long), 0
        lr = opt.param_groups[0]["lr"]
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, cfg.precision):
                logits = model(x)  # (B, classes)
                loss = criterion(logits, y, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            # Kept on the device: one host sync per epoch, not per step.
            losses.append(loss.detach().float())
            correct += (logits.detach().argmax(-1) == y).sum()
            seen += y.shape[0]
        step_losses = torch.stack(losses)
        finite = torch.isfinite(step_losses)
        if not bool(finite.all()):
            step = int((~finite).nonzero()[0])
            raise NonFiniteLossError(
                f"non-finite training loss ({float(step_losses[step])}) at epoch {epoch + 1}, "
                f"step {step + 1}/{steps_per_epoch} (lr {cfg.lr}); no metrics written"
            )
        row = {
            "epoch": epoch + 1,
            "loss": float(step_losses.mean()),
            "lr": float(lr),
            "train_top1": float(correct) / max(seen, 1),
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if log is not None:
            log(f"epoch {row['epoch']}/{cfg.epochs}  loss {row['loss']:.4f}  train_top1 {row['train_top1']:.4f}  "
                f"lr {row['lr']:.2e}  {row['seconds']:.1f}s")
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: str | torch.device = "cpu",
             precision: str = "auto") -> dict[str, Any]:
    """Top-1 accuracy and mean cross-entropy over a loader, in eval mode (the previous mode is restored).

    ``precision`` as in :class:`TrainConfig` (the stages pass their recipe's, so a model is
    evaluated the way it was trained).

    Returns:
        ``{"top1", "loss", "n", "labels", "pred"}``: ``labels`` and ``pred`` are int64 arrays in the
        loader's order (per-image predictions, for paired comparisons of two models on the same images).
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    was_training = model.training
    model.to(device).eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    labels, preds = [], []
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, precision):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            pred = logits.argmax(-1)
            correct += (pred == y).sum()
            n += y.shape[0]
            labels.append(y.cpu())
            preds.append(pred.cpu())
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate: the loader is empty")
    return {"top1": float(correct) / n, "loss": float(loss_sum) / n, "n": n,
            "labels": torch.cat(labels).numpy().astype(np.int64), "pred": torch.cat(preds).numpy().astype(np.int64)}


def save_predictions(path: str | Path, split: str, **results: dict[str, Any]) -> None:
    """Write the per-image labels and predictions of evaluations to ``path`` (``predictions.npz``).

    Args:
        path: the file to write (atomically).
        split: the evaluated split (``test`` or ``val200``), stored as the array ``split``.
        results: name → an :func:`evaluate` result; ``pred=`` is stored as ``labels``/``pred``, any
            other name ``x`` as ``pred_x`` (e.g. ``before_retrain``). All must share the labels.
    """
    from petlprune.io import atomic_path

    main = results.get("pred")
    if main is None:
        raise ValueError("save_predictions: give the main evaluation as pred=")
    arrays = {"labels": main["labels"], "pred": main["pred"], "split": np.array(split)}
    for name, res in results.items():
        if name == "pred":
            continue
        if not np.array_equal(res["labels"], main["labels"]):
            raise ValueError(f"save_predictions: evaluation {name!r} saw other images than pred=")
        arrays[f"pred_{name}"] = res["pred"]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
