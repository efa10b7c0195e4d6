"""What a job costs from first principles: FLOPs over sustained throughput, plus a fixed cost per job.

``petlprune cost`` (src/petlprune/stages/cost.py) prints this estimate beside its upper bound (the
runtime each job requests). The reasoning is issue 28's and the book's page on cost (book/cost.md):

    seconds(job) = fixed + FLOPs(job) / rate
    fixed        = start-up (Python, imports, CUDA) + backbone load + data read (bytes / read rate)
    FLOPs(job)   = images x epochs x FLOPs per image of the model the job trains or evaluates

FLOPs per image are counted with torch's ``FlopCounterMode`` on the real shape (image size, depth,
width, PETL), on the meta device (no arithmetic, no weights), and cached per architecture. A training
image costs its forward and backward pass (gradients w.r.t. activations everywhere, w.r.t. weights of
the trainable PETL parameters only: what the counter sees). ``rate`` is a device's sustained FLOP/s:
peak bf16 x an MFU assumption for the GPU kinds in :data:`PEAK_BF16`, or measured rates (the GPU check's
JSON, or a CPU rates file in the format of ``benchmarks/roofline.py``).

This module imports torch (and timm) only inside :func:`flops_per_image`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PEAK_BF16", "DEFAULT_MFU", "VTAB_TEST_IMAGES", "Rates", "FixedCost", "JobCost", "Study",
           "flops_per_image", "rates_for", "read_rates_file", "rates_from_gpu_check", "describe"]

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets: A100 SXM 312, H100 SXM 989, H200 989,
# L40S 362; the sparsity figures are twice these and never reached by a ViT's dense GEMMs).
PEAK_BF16 = {"a100": 312e12, "h100": 989e12, "h200": 989e12, "l40s": 362e12}
DEFAULT_MFU = 0.35  # sustained share of the peak for ViT-B/16 training at batch 64 (issue 28's figure)
# The test split of every VTAB-1k task (NOAH list files, test.txt): the images a job evaluates.
VTAB_TEST_IMAGES = {
    "cifar": 10000, "caltech101": 6084, "dtd": 1880, "oxford_flowers102": 6149, "oxford_iiit_pet": 3669,
    "svhn": 26032, "sun397": 21750, "patch_camelyon": 32768, "eurosat": 5400, "resisc45": 6300,
    "diabetic_retinopathy": 42670, "clevr_count": 15000, "clevr_dist": 15000, "dmlab": 22735, "kitti": 711,
    "dsprites_loc": 73728, "dsprites_ori": 73728, "smallnorb_azi": 12150, "smallnorb_ele": 12150,
}


@dataclass(frozen=True)
class Rates:
    """Sustained FLOP/s of a device for training and for evaluation, and where they come from."""

    device: str
    train_flops_per_s: float
    eval_flops_per_s: float
    source: str


@dataclass(frozen=True)
class FixedCost:
    """The per-job cost that does not scale with FLOPs (seconds; bytes per second).

    Defaults (book/cost.md, "The model"): 8 s of start-up, from a cold ``import petlprune.train, timm,
    torch`` measured here (4 CPU-seconds, 12 s wall on the shared machine) plus CUDA's initialisation on
    a GPU node; a read rate typical of a cluster's shared file system (1 GB/s). Each is an option of
    ``petlprune cost``.
    """

    startup_s: float = 8.0
    read_bytes_per_s: float = 1e9

    def seconds(self, data_bytes: float, backbone_bytes: float) -> float:
        return self.startup_s + (data_bytes + backbone_bytes) / self.read_bytes_per_s


def rates_for(device: str, mfu: float = DEFAULT_MFU) -> Rates:
    """A GPU kind's assumed rates: peak bf16 x MFU (evaluation at the same MFU: a stated assumption)."""
    if device not in PEAK_BF16:
        raise ValueError(f"--gpu {device}: no peak figure; one of {', '.join(PEAK_BF16)} (or cpu with --rates FILE)")
    rate = PEAK_BF16[device] * mfu
    return Rates(device, rate, rate, f"assumed: {PEAK_BF16[device] / 1e12:.0f} TFLOP/s bf16 peak x MFU {mfu:g}")


def read_rates_file(path: Path) -> Rates:
    """Rates measured by ``benchmarks/roofline.py``: ``{"device", "train_flops_per_s", "eval_flops_per_s",
    "gemm_peak_flops_per_s": {"fp32", "bf16"}}``; only the first three are used."""
    doc = json.loads(Path(path).read_text())
    missing = [k for k in ("device", "train_flops_per_s", "eval_flops_per_s") if k not in doc]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)} (the format of benchmarks/roofline.py)")
    train, evaluate = float(doc["train_flops_per_s"]), float(doc["eval_flops_per_s"])
    if not (train > 0 and evaluate > 0):
        raise ValueError(f"{path}: train_flops_per_s and eval_flops_per_s must be > 0")
    return Rates(str(doc["device"]), train, evaluate, f"measured: {path}")


def rates_from_gpu_check(doc: dict[str, Any]) -> Rates | None:
    """The GPU check's measured rates (benchmarks/gpu_check.py): its training images/s of ViT-B/16 +
    adapter at batch 64 and its unpruned inference images/s at batch 256, times their FLOPs per image."""
    rows = doc.get("throughput", [])
    train = next((r for r in rows if str(r.get("measurement", "")).startswith("train") and r.get("images_per_s")), None)
    infer = next((r for r in rows if r.get("measurement") == "inference, ViT-B/16 unpruned"
                  and r.get("batch") == 256 and r.get("images_per_s")), None)
    if train is None:
        return None
    vit_b = {"timm_model": "vit_base_patch16_224", "timm_kwargs": {}, "image_size": 224}
    train_rate = train["images_per_s"] * flops_per_image(**vit_b, petl="adapter",
                                                         petl_options={"bottleneck": 8}, train=True)
    eval_rate = infer["images_per_s"] * flops_per_image(**vit_b, train=False) if infer else train_rate
    return Rates(str(doc.get("gpu", "gpu")), train_rate, eval_rate, "measured: the GPU check's JSON")


def flops_per_image(timm_model: str, timm_kwargs: dict | None, image_size: int, petl: str | None = None,
                    petl_options: dict | None = None, depth: int | None = None, num_classes: int = 100,
                    train: bool = True, cache: Path | None = None) -> float:
    """FLOPs of one image through the model (forward, plus backward when ``train``), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` on the meta device; cached in memory and in ``cache``."""
    key = json.dumps([timm_model, timm_kwargs or {}, image_size, petl, petl_options or {}, depth, num_classes,
                      train], sort_keys=True)
    stored = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    if key in stored:
        return float(stored[key])
    value = _count(key)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        stored = json.loads(cache.read_text()) if cache.is_file() else {}
        cache.write_text(json.dumps({**stored, key: value}, indent=1))
    return value


@functools.cache
def _count(key: str) -> float:
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from petlprune.models.backbone import create_backbone
    from petlprune.models.petl import inject_petl, mark_trainable

    timm_model, kwargs, image_size, petl, options, depth, num_classes, train = json.loads(key)
    kwargs = {**kwargs, **({"depth": depth} if depth is not None else {})}
    name = timm_model.split(".")[0]  # the architecture; a pretrained tag's weights are not needed
    with torch.device("meta"):
        model = create_backbone(name, kwargs, num_classes=num_classes, weights="random")
        if petl is not None:
            mark_trainable(inject_petl(model, petl, **options), petl)
        x = torch.empty(1, 3, image_size, image_size)  # (B, 3, H, W)
        y = torch.zeros(1, dtype=torch.long)
    model.train(train)
    with FlopCounterMode(display=False) as counter:
        if train:
            F.cross_entropy(model(x), y).backward()
        else:
            with torch.no_grad():
                model(x)
    return float(counter.get_total_flops())


def describe(rates: Rates, fixed: FixedCost) -> list[str]:
    """The assumptions, named, for the printed table."""
    return [f"device {rates.device}: training {rates.train_flops_per_s / 1e12:.3g} TFLOP/s, evaluation "
            f"{rates.eval_flops_per_s / 1e12:.3g} TFLOP/s ({rates.source})",
            f"fixed cost per job: start-up {fixed.startup_s:g} s + (data + backbone bytes) / "
            f"{fixed.read_bytes_per_s / 1e9:g} GB/s"]


# ------------------------------------------------------------------------------------------------
# One job of the DAG: its images, epochs and model, read from the study's config and its wildcards.


@dataclass(frozen=True)
class JobCost:
    """The estimate of one job: FLOPs, bytes read and seconds (fixed + FLOPs / rate)."""

    flops: float
    data_bytes: float
    seconds: float


class Study:
    """The few facts of a study's config the model needs (images per split, recipes, the backbone)."""

    def __init__(self, cfg: dict[str, Any], cache: Path | None = None) -> None:
        self.cfg, self.cache = cfg, cache
        self.data, self.bb = cfg["data"], cfg["backbone"]
        self.size = int(self.data.get("image_size", 224))
        self.depth = int((self.bb.get("timm_kwargs") or {}).get("depth", 12))

    def images(self, task: str) -> tuple[int, int]:
        """(training images, test images) of a task: the list files where they are non-empty, else
        VTAB-1k's sizes (train800val200: 1,000; test: :data:`VTAB_TEST_IMAGES`); embedded: data.sizes."""
        if self.data.get("kind") != "vtab":
            sizes = self.data["sizes"]
            return sizes["train800"] + sizes["val200"], sizes["test"]
        counts = []
        for split, default in (("train800val200", 1000), ("test", VTAB_TEST_IMAGES.get(task, 10000))):
            path = Path(self.data["root"]) / task / f"{split}.txt"
            n = sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0
            counts.append(n or default)
        return counts[0], counts[1]

    def fpi(self, task: str, petl: str | None, depth: int | None, train: bool) -> float:
        classes = (self.data.get("num_classes") or {}).get(task, 10)
        options = (self.cfg["petl"].get("options") or {}).get(petl, {}) if petl else {}
        return flops_per_image(self.bb["timm_model"], self.bb.get("timm_kwargs") or {}, self.size, petl, options,
                               None if depth in (None, self.depth) else depth, classes, train, self.cache)

    def epochs(self, stage: str, petl: str) -> float:
        own = (self.cfg["petl"].get("recipes") or {}).get(petl, {}).get(stage, {})
        return float({**self.cfg[stage], **own}["epochs"])

    def pruned_depth(self, budget: str) -> int:
        """A fixed depth ``dK`` keeps K blocks; every other budget (matched, aX, pX, rX) is counted at the
        full depth: an upper bound (SLS's chosen depth is known only after its scores)."""
        return int(budget[1:]) if budget[:1] == "d" and budget[1:].isdigit() else self.depth

    def bytes_of(self, n_images: int) -> float:
        return float(n_images) * 3 * self.size * self.size  # the uint8 image cache (data stage)

    def job(self, rule: str, wc: dict[str, str], n_outputs: int, rates: Rates, fixed: FixedCost) -> JobCost | None:
        """The estimate of one job of ``rule``, or None for a rule the model has no FLOPs for (CPU-only
        rules: data, pretrain, plan, the notebooks and the book)."""
        task, petl = wc.get("task", ""), wc.get("petl")
        if rule not in ("finetune", "prune", "features", "score") and not rule.startswith("measure_"):
            return None
        n_train, n_test = self.images(task)
        train_f = eval_f = 0.0
        read = 0.0
        if rule == "finetune":
            train_f = self.epochs("finetune", petl) * n_train * self.fpi(task, petl, None, True)
            eval_f = n_test * self.fpi(task, petl, None, False)
            read = self.bytes_of(n_train + n_test)
        elif rule == "prune":
            depth = self.pruned_depth(wc.get("budget", ""))
            train_f = self.epochs("retrain", petl) * n_train * self.fpi(task, petl, depth, True)
            eval_f = n_test * self.fpi(task, petl, depth, False)
            read = self.bytes_of(n_train + n_test)
        elif rule == "features":
            eval_f = n_train * self.fpi(task, petl, None, False)
            read = self.bytes_of(n_train)
        elif rule == "score":  # one forward and backward pass over the training images (an assumption)
            train_f = n_train * self.fpi(task, petl, None, True)
            read = self.bytes_of(n_train)
        else:  # measure_{petl}: every model of the run, (warmup + repeats) passes per batch size
            m = self.cfg["measure"]
            images = (m.get("warmup", 10) + m.get("repeats", 50)) * sum(m.get("batch_sizes", [1]))
            eval_f = max(n_outputs, 1) * images * self.fpi(task, petl, None, False)
        backbone = 4.0 * self._params()
        seconds = (fixed.seconds(read, backbone) + train_f / rates.train_flops_per_s
                   + eval_f / rates.eval_flops_per_s)
        return JobCost(train_f + eval_f, read, seconds)

    def _params(self) -> float:
        return _param_count(self.bb["timm_model"].split(".")[0], json.dumps(self.bb.get("timm_kwargs") or {}))


@functools.cache
def _param_count(name: str, kwargs: str) -> float:
    import torch

    from petlprune.models.backbone import create_backbone

    with torch.device("meta"):
        model = create_backbone(name, json.loads(kwargs), num_classes=10, weights="random")
    return float(sum(p.numel() for p in model.parameters()))
