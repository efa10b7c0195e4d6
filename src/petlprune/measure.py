"""Efficiency of a model: parameters (forward path / trainable / stored per task), FLOPs, throughput.

Conventions, so that every number in the study means the same thing:

* FLOPs are torch's ``FlopCounterMode`` convention: 2 x multiply-accumulates of matmuls, convolutions
  and attention; element-wise ops (norms, GELU, softmax, adds) are not counted. Torch has no formula
  for the fused CPU attention kernel, so one is supplied here: the count is then the same on CPU and
  GPU, fused attention or not.
* Throughput is timed in eval mode under ``inference_mode`` after a warm-up; the figure is the MEDIAN
  over repeated timings of one batch (CUDA events on GPU), never a mean that one hiccup can move.
* Stored parameters are what ONE task must keep to rebuild its model from the shared pretrained
  backbone (``stored_params``): its trained tensors (PETL + head; fine-pruning's trained W slices)
  plus its Plan, whose integers count one each and whose channel masks (SPA; DepGraph's kept indices)
  one bit per channel packed into 32-bit words. A frozen backbone that a Plan re-derives is never
  charged. Methods that change the backbone's shapes (``reshapes_backbone``: DepGraph, SPA,
  fine-pruning) also get ``params_stored_as_model``: the pruned model stored whole, as deployed.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = [
    "count_params",
    "reshapes_backbone",
    "stored_params",
    "plan_cost",
    "flops",
    "throughput",
    "peak_memory_mb",
    "reset_peak_memory",
    "input_shape_of",
    "measure_model",
]

STORED_UNITS_NOTE = (
    "parameters a task keeps to rebuild its model from the shared backbone; a Plan's integers count one "
    "each (a prefix of kept blocks is one integer, the depth), channel masks (SPA, DepGraph's kept "
    "indices) one bit per channel packed in 32-bit words (ceil(bits/32))"
)
STORED_AS_MODEL_NOTE = "forward parameters of the pruned model as deployed, stored whole per task"


def reshapes_backbone(plan: Any) -> bool:
    """Whether the Plan's method changes the backbone's shapes (its registry ``reshapes_backbone``)."""
    method = _plan_field(plan, "method") if plan is not None else None
    if method is None:
        return False
    from petlprune.methods import get

    return bool(getattr(get(method), "reshapes_backbone", False))


# --------------------------------------------------------------------------------------------------
# parameters


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters in the forward path and trainable ones; a module shared by several positions once.

    Args:
        model: any module (its ``parameters()`` already yields a shared parameter only once).

    Returns:
        ``{"forward": int, "trainable": int}``.
    """
    params = list(model.parameters())
    # closed-form task weights (TOAST's bridge, models/bridge.py) are stored but never trained, even when a
    # reloaded model marks every task weight trainable
    fitted = {id(p) for m in model.modules() if getattr(m, "closed_form", False) for p in m.parameters()}
    return {
        "forward": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad and id(p) not in fitted),
    }


def _count_mask_bits(obj: Any, where: str) -> int:
    """Number of channels (one bit each) in a nest of masks: tensors, arrays, lists, dicts."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        if obj.size and not np.isin(obj, (0, 1)).all():
            raise ValueError(f"{where}: channel masks must hold only 0/1 values")
        return int(obj.size)
    if isinstance(obj, Mapping):
        return sum(_count_mask_bits(v, f"{where}[{k!r}]") for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        if all(isinstance(v, (bool, int, float)) for v in obj):
            return _count_mask_bits(np.asarray(obj), where)
        return sum(_count_mask_bits(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise ValueError(f"{where}: cannot read channel masks from a {type(obj).__name__}")


def _load_masks(path: Path) -> Any:
    from petlprune.io import load_checkpoint, read_json

    if not path.is_file():
        raise FileNotFoundError(f"{path}: channel-mask file named by the plan not found")
    if path.suffix == ".json":
        return read_json(path)
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    return load_checkpoint(path)


def _plan_field(plan: Any, key: str) -> Any:
    return plan.get(key) if isinstance(plan, Mapping) else getattr(plan, key, None)


def plan_cost(plan: Any, *, positions: int | None = None, base_dir: str | os.PathLike | None = None) -> int:
    """What storing a Plan costs, in 32-bit numbers (the unit ``stored_params`` adds to parameters).

    Kept blocks that form a prefix cost ONE integer (the depth: SLS's point); any other kept set costs
    one integer per kept block. A sharing map costs one integer per adapter position (position p is
    served by adapter pi(p)). Channel masks cost one bit per channel, packed: ceil(bits / 32).

    Args:
        plan: a ``methods.base.Plan`` or its JSON dict; None (unpruned) costs 0.
        positions: number of adapter positions P, for a sharing map (at least one past the largest
            position the map names is counted in any case).
        base_dir: directory a relative mask path is resolved against (default: the working directory).
    """
    if plan is None:
        return 0
    kept = [int(i) for i in (_plan_field(plan, "kept_blocks") or [])]
    cost = 1 if kept == list(range(len(kept))) else len(kept)
    sharing = _plan_field(plan, "sharing")
    if sharing:
        named = max(max(int(k), int(v)) for k, v in sharing.items()) + 1
        cost += max(positions or 0, named)
    masks = _plan_field(plan, "masks")
    if masks is not None:
        where = f"plan {_plan_field(plan, 'method')} masks"
        if isinstance(masks, (str, os.PathLike)):
            path = Path(masks)
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            masks, where = _load_masks(path), str(path)
        cost += math.ceil(_count_mask_bits(masks, where) / 32)
    return cost


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(model).__name__}: no classifier module (get_classifier() or .head)")
    return tuple(f"{name}." for name, m in model.named_modules(remove_duplicate=False) if m is head and name)


def _petl_positions(model: nn.Module) -> tuple[tuple[str, ...], int]:
    """Name prefixes of every PETL module (a shared one under each of its names) and the number of
    adapter positions (``Parallel`` wrappers; several may hold one shared module)."""
    from petlprune.models.petl import PetlModule, petl_wrappers

    prefixes = tuple(
        f"{name}." for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, PetlModule)
    )
    positions = sum(len(ws) for ws in petl_wrappers(model).values()) if hasattr(model, "blocks") else 0
    return prefixes, positions


def stored_params(
    plan: Any,
    model: nn.Module,
    *,
    stores_backbone: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> dict[str, int]:
    """What ONE task must keep to rebuild its model from the shared pretrained backbone, in parameters.

    The task weights are ``models.petl.task_state_dict(model)`` (trained PETL parameters + head; every
    weight for ``full`` fine-tuning; fine-pruning's trained W), a tensor shared by several positions
    counted once, a channel-masked SPLoRA tensor by its kept rows/columns. Entries under a PETL module
    count as ``petl``, under the classifier as ``head``, anything else (a trained backbone weight) as
    ``backbone``. The Plan costs ``plan_cost`` (prefix of kept blocks: one integer; masks: bits). A
    frozen backbone a Plan re-derives (DepGraph's slice, SPA's masked W) costs nothing here; the
    pruned model stored whole is ``measure_model``'s ``params_stored_as_model``.

    Args:
        plan: the Plan (object or JSON dict) or None for an unpruned model.
        model: the task model, after the plan was applied.
        stores_backbone: also charge the frozen forward-path backbone (a task that keeps a whole copy
            of its backbone); default False.
        base_dir: directory a relative mask path of the plan is resolved against.

    Returns:
        ``{"petl", "head", "plan", "backbone", "total"}``.
    """
    from petlprune.models.petl import task_state_dict

    head = _head_prefixes(model)
    petl, positions = _petl_positions(model)

    def kind(name: str) -> str:
        if name.startswith(head):
            return "head"
        return "petl" if name.startswith(petl) else "backbone"

    out = dict.fromkeys(("petl", "head", "plan", "backbone"), 0)
    task = task_state_dict(model)  # keys are parameter names, a shared tensor under its first name only
    # Channel-masked SPLoRA layers store only their kept rows/columns: r(|m_out| + |m_in|) + |m_out|
    # (and |m_out| |m_in| for a trained W, fine-pruning); every other tensor counts whole.
    masked: dict[str, int] = {}
    if getattr(model, "petl_method", None) == "splora":
        from petlprune.models.splora import effective_numel

        masked = effective_numel(model)
    for name, t in task.items():
        out[kind(name)] += masked.get(name, t.numel())
    if stores_backbone:
        out["backbone"] += sum(
            p.numel() for name, p in model.named_parameters() if kind(name) == "backbone" and name not in task
        )
    out["plan"] = plan_cost(plan, positions=positions or None, base_dir=base_dir)
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------------------------------
# FLOPs


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Torch counts the CUDA attention kernels but not the fused CPU one, which timm's ViT calls on CPU:
# without this, attention would vanish from the count on CPU only.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flop}


def input_shape_of(model: nn.Module, image_size: int | Sequence[int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) of one input image: read from a timm ``patch_embed`` unless ``image_size`` is given.

    Args:
        model: the model (timm ViT: ``patch_embed.img_size`` and ``patch_embed.proj.in_channels``).
        image_size: side (or (H, W)) to use instead of the model's own input size.
    """
    patch_embed = getattr(model, "patch_embed", None)
    proj = getattr(patch_embed, "proj", None)
    channels = int(getattr(proj, "in_channels", 3))
    if image_size is None:
        size = getattr(patch_embed, "img_size", None)
        if size is None:
            raise ValueError(f"{type(model).__name__}: no patch_embed.img_size; pass the input shape explicitly")
        image_size = size
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    h, w = (int(s) for s in image_size)
    return channels, h, w


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass per image, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Args:
        model: the model, on the device it will run on (eval mode is used, then restored).
        input_shape: (C, H, W) of one image; any other length is read as (B, ...) with a batch
            dimension first, and the count over the B inputs is divided by B.

    Returns:
        FLOPs per image (2 per multiply-accumulate; matmuls, convolutions and attention only).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) < 2 or shape[0] < 1:
        raise ValueError(f"input_shape {tuple(input_shape)}: expected (C, H, W) or (B, ...) with B >= 1")
    x = torch.zeros(shape, device=_model_device(model))
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    total = counter.get_total_flops()
    if total % shape[0]:
        raise RuntimeError(f"{total} FLOPs over a batch of {shape[0]} is not a whole number per image")
    return total // shape[0]


# --------------------------------------------------------------------------------------------------
# time and memory


def _is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def throughput(
    model: nn.Module,
    batch_size: int,
    *,
    input_shape: Sequence[int] | None = None,
    warmup: int = 10,
    repeats: int = 50,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Images per second and latency of one batch: median over ``repeats`` timed passes.

    Eval mode under ``inference_mode``; ``warmup`` untimed passes first. On CUDA each pass is timed
    with CUDA events and the device synchronised; on CPU with ``time.perf_counter``. The model's
    training flag and device are restored afterwards.

    Args:
        model: the model to time.
        batch_size: images per forward pass.
        input_shape: (C, H, W); default: read from the model (``input_shape_of``).
        warmup: untimed passes before timing.
        repeats: timed passes.
        device: where to run (default: where the model's parameters are).

    Returns:
        ``{"images_per_s", "latency_ms", "latency_ms_iqr"}``: batch_size / median time, the median
        time of one batch in ms, and the interquartile range of those times in ms.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(model)
    home = _model_device(model)
    device = torch.device(device) if device is not None else home
    was_training = model.training
    model.to(device).eval()
    x = torch.randn((batch_size, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    times = np.empty(repeats)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            if _is_cuda(device):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(device)
                for i in range(repeats):
                    start.record()
                    model(x)
                    end.record()
                    end.synchronize()
                    times[i] = start.elapsed_time(end) / 1e3
            else:
                for i in range(repeats):
                    t0 = time.perf_counter()
                    model(x)
                    times[i] = time.perf_counter() - t0
    finally:
        model.to(home).train(was_training)
    median = float(np.median(times))
    q25, q75 = np.percentile(times, [25, 75])
    return {
        "images_per_s": batch_size / median,
        "latency_ms": median * 1e3,
        "latency_ms_iqr": float(q75 - q25) * 1e3,
    }


def _linux_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_memory(device: str | torch.device | None = None) -> None:
    """Start a new peak-memory window: CUDA's peak counter, or (Linux) the process's peak RSS."""
    device = torch.device(device or "cpu")
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # "5" resets only the peak-RSS mark (proc(5)); not allowed everywhere, then the window is the process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb(device: str | torch.device | None = None) -> float:
    """Peak memory in MiB since the last ``reset_peak_memory``: tensors allocated on CUDA; on CPU the
    process's peak resident set (Python and torch included)."""
    device = torch.device(device or "cpu")
    if _is_cuda(device):
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = _linux_status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if platform.system() == "Darwin" else rss / 2**10
    return kb / 2**10


# --------------------------------------------------------------------------------------------------
# everything, as efficiency.json


def _device_name(device: torch.device) -> str:
    if _is_cuda(device):
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_model(
    model: nn.Module,
    *,
    image_size: int,
    batch_sizes: Iterable[int] = (1, 64),
    plan: Any = None,
    warmup: int = 10,
    repeats: int = 50,
    device: str | torch.device = "cpu",
    stores_backbone: bool | None = None,
    plan_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Every efficiency figure of one model, as the ``efficiency.json`` of CONTRIBUTING.md.

    The model is moved to ``device`` (and left there). Peak memory covers the measurements of this
    model only where the platform allows resetting it (CUDA; Linux for the process RSS).

    Args:
        model: the task model (pruned or not).
        image_size: side of the square input images.
        batch_sizes: batch sizes to time.
        plan: the Plan (object or dict) the model was pruned with, or None.
        warmup: untimed passes before each timing.
        repeats: timed passes per batch size (the median is reported).
        device: where to run.
        stores_backbone: passed to ``stored_params``.

    ``params_stored_as_model`` (methods that reshape the backbone, else None) is ``params_forward``
    of ``model`` as given: pass the deployed form (SPA: sliced), as the measure stage does.
        plan_dir: where a relative mask path of the plan is resolved.
    """
    device = torch.device(device)
    model.to(device).eval()
    reset_peak_memory(device)
    shape = input_shape_of(model, image_size)
    params = count_params(model)
    stored = stored_params(plan, model, stores_backbone=stores_backbone, base_dir=plan_dir)
    timings = {
        str(int(b)): throughput(model, int(b), input_shape=shape, warmup=warmup, repeats=repeats, device=device)
        for b in batch_sizes
    }
    return {
        "params_forward": params["forward"],
        "params_trainable": params["trainable"],
        "params_stored": stored["total"],
        "stored_breakdown": {k: stored[k] for k in ("petl", "head", "plan", "backbone")},
        "stored_units": STORED_UNITS_NOTE,
        "params_stored_as_model": params["forward"] if reshapes_backbone(plan) else None,
        "stored_as_model_units": STORED_AS_MODEL_NOTE,
        "flops_per_image": flops(model, shape),
        "flops_counter": "torch FlopCounterMode: 2 x MACs of matmul, convolution and attention",
        "throughput": timings,
        "input_shape": list(shape),
        "warmup": int(warmup),
        "repeats": int(repeats),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": _device_name(device),
        "peak_memory_mb": peak_memory_mb(device),
    }
