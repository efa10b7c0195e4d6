"""Re-train an identical pruned model once: ``petlprune prune`` reuses a sibling's re-training.

Different methods and budgets often hand the re-training the same model. On a task where SLS keeps
all 12 blocks, SLS, SGLP and DepGraph at ``matched`` and the re-trained unpruned control are one and
the same model (measured on the default tier: their four re-trainings gave bit-identical metrics).
Re-training is deterministic (fixed seed, threads and device; ``train.set_determinism``), so its
result is a function of what goes in. :func:`fingerprint` hashes all of that: every parameter and
buffer (values, shapes, which are trainable, which are shared), the modules' types and attributes,
the recipe, seed, threads, device and the data. A prune job whose fingerprint matches a finished
sibling in the same run (``RUN/pruned/*/metrics.json``) takes that sibling's re-trained task weights
and evaluations instead of computing them again, and says so in its metrics' provenance
(``retrain_reused_from``; the values are those a re-training gives, the provenance says how they came).
A lock per fingerprint makes a second identical job wait for the first rather than repeat it.

Not reused: a re-training with a method's own loss (``retrain_loss``, e.g. Pear's distillation),
whose behaviour a fingerprint of the model cannot see.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["fingerprint", "find_retrained", "retrain_lock"]

_SCALARS = (bool, int, float, str, type(None))
# Attributes that record, and never steer, the forward: models/surgery.py's note of which original
# blocks a layer-pruned model kept (a width-pruned or unpruned model has none; the saved Plan says it).
_BOOKKEEPING = frozenset({"kept_blocks"})


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _attributes(module: nn.Module) -> dict[str, Any]:
    """A module's plain attributes (scales, dropout rates, flags): what its ``repr`` may not show."""
    out = {}
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or key == "training" or key in _BOOKKEEPING:
            continue
        if isinstance(value, _SCALARS) or (isinstance(value, (tuple, list)) and all(isinstance(v, _SCALARS) for v in value)):
            out[key] = value
        elif isinstance(value, torch.Tensor):  # a plain tensor attribute (not a buffer) still shapes the forward
            out[key] = hashlib.sha256(_bytes(value)).hexdigest()
    return out


def fingerprint(model: nn.Module, context: dict[str, Any]) -> str:
    """sha256 of everything a deterministic re-training of ``model`` depends on.

    Args:
        model: the pruned model, trainable parameters marked, before re-training.
        context: the rest, JSON-serialisable: recipe, seed, threads, device, data, splits. No path:
            the same run in another folder has the same fingerprints.
    """
    h = hashlib.sha256()
    h.update(json.dumps(context, sort_keys=True, default=str).encode())
    h.update(repr(model).encode())
    first_name: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        hooks = [getattr(f, "__qualname__", repr(f)) for d in (module._forward_pre_hooks, module._forward_hooks)
                 for f in d.values()]
        h.update(json.dumps([name, type(module).__qualname__, _attributes(module), hooks], default=str).encode())
    for name, p in model.named_parameters(remove_duplicate=False):
        shared_with = first_name.setdefault(id(p), name)  # a shared parameter is trained as one
        h.update(json.dumps([name, list(p.shape), str(p.dtype), p.requires_grad, shared_with]).encode())
        if shared_with == name:
            h.update(_bytes(p))
    for name, b in model.named_buffers(remove_duplicate=False):
        h.update(json.dumps([name, list(b.shape), str(b.dtype)]).encode())
        h.update(_bytes(b))
    return h.hexdigest()


def find_retrained(out: Path, fp: str) -> Path | None:
    """A finished sibling of ``out`` (``out.parent/*``) whose re-training had fingerprint ``fp``."""
    for metrics in sorted(out.parent.glob("*/metrics.json")):
        sibling = metrics.parent
        if sibling == out or not ((sibling / "model.pt").exists() and (sibling / "predictions.npz").exists()):
            continue
        try:
            found = (json.loads(metrics.read_text()).get("provenance") or {}).get("retrain_fingerprint")
        except (OSError, ValueError):
            continue
        if found == fp:
            return sibling
    return None


@contextlib.contextmanager
def retrain_lock(out: Path, fp: str | None) -> Iterator[None]:
    """Hold ``out.parent/.retrain-FP.lock`` while re-training: a job with the same fingerprint waits,
    then finds this one's result. The lock dies with its process, so a crashed job blocks nobody."""
    if fp is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".retrain-{fp[:24]}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
