"""The backbone: a timm VisionTransformer with weights from our cache, a timm tag, a local file, or random.

The classification head is never loaded from any source: every backbone gets a freshly initialised head
with the task's number of classes, so what a task learns is never confounded with a pretraining head.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import trunc_normal_
from torch import nn

from petlprune.io import atomic_torch_save, load_checkpoint
from petlprune.models.assets import AssetError, bundled_path, read_asset

__all__ = [
    "WEIGHT_SOURCES",
    "BACKBONE_KEYS",
    "BackboneError",
    "create_backbone",
    "create_bundled",
    "read_backbone",
    "save_backbone",
    "backbone_state_dict",
    "data_config",
    "state_fingerprint",
]

WEIGHT_SOURCES = ("random", "timm", "file", "bundled")
# Keys of our cached backbone format (results/backbone/{name}.pt).
BACKBONE_KEYS = ("timm_model", "timm_kwargs", "state_dict", "mean", "std")


class BackboneError(RuntimeError):
    """A backbone cannot be created or its weights do not fit the architecture."""


def _new_head(model: nn.Module, num_classes: int) -> None:
    """Replace the head by a fresh one, initialised as timm's default ViT init does (trunc-normal .02, bias 0)."""
    model.reset_classifier(num_classes)
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    name = model.pretrained_cfg.get("classifier", "head") if hasattr(model, "pretrained_cfg") else "head"
    names = name if isinstance(name, (list, tuple)) else (name,)
    return tuple(f"{n}." for n in names)


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the classification head (what a backbone file stores)."""
    heads = _head_prefixes(model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith(heads)}


def state_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and values: equal fingerprints mean equal weights."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_config(model: nn.Module) -> dict[str, Any]:
    """mean, std and input size the model expects (timm's pretrained_cfg, which our loaders update)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return {
        "mean": [float(v) for v in cfg.get("mean", (0.5, 0.5, 0.5))],
        "std": [float(v) for v in cfg.get("std", (0.5, 0.5, 0.5))],
        "image_size": int(model.patch_embed.img_size[0]),
    }


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, possibly wrapped as {"state_dict": ...} / {"model": ...} (common layouts)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load every non-head weight; missing, unexpected or mis-shaped keys are errors that name the key."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    # timm's filter converts foreign layouts (e.g. original ViT / CLIP names) and resizes pos_embed.
    state = checkpoint_filter_fn(dict(state), model)
    heads = _head_prefixes(model)
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(heads)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise BackboneError(
            f"{source}: weights do not fit {type(model).__name__}"
            + (f"; missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}" if missing else "")
            + (f"; unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
               if unexpected else "")
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise BackboneError(
                f"{source}: shape mismatch for key {key!r}: file has {tuple(value.shape)}, "
                f"model has {tuple(own[key].shape)}"
            )
    model.load_state_dict(state, strict=False)


def read_backbone(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate one of our cached backbone files; errors name the file and the key."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise BackboneError(f"{path}: not a backbone file (expected a dict with keys {', '.join(BACKBONE_KEYS)})")
    missing = [k for k in BACKBONE_KEYS if k not in ckpt]
    if missing:
        raise BackboneError(f"{path}: not a petlprune backbone file: missing key(s) {', '.join(missing)}")
    if not isinstance(ckpt["timm_kwargs"], dict):
        raise BackboneError(f"{path}: key 'timm_kwargs' must be a dict, got {type(ckpt['timm_kwargs']).__name__}")
    for key in ("mean", "std"):
        if len(ckpt[key]) != 3:
            raise BackboneError(f"{path}: key {key!r} must hold 3 channel values, got {ckpt[key]!r}")
    return ckpt


def save_backbone(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    timm_model: str,
    timm_kwargs: dict[str, Any],
    mean: list[float] | tuple[float, ...],
    std: list[float] | tuple[float, ...],
) -> None:
    """Atomically write our cached backbone format (the head is not stored).

    Args:
        path: destination ``.pt`` file.
        model: the timm model whose weights (minus head) are stored.
        timm_model: timm architecture name, e.g. ``vit_tiny_patch16_224``.
        timm_kwargs: keyword arguments given to ``timm.create_model`` (img_size, depth, ...).
        mean: per-channel normalisation mean of the pretraining data.
        std: per-channel normalisation std.
    """
    atomic_torch_save(
        {
            "timm_model": timm_model,
            "timm_kwargs": dict(timm_kwargs),
            "state_dict": backbone_state_dict(model),
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
        },
        path,
    )


def _create(timm_model: str, timm_kwargs: dict[str, Any], num_classes: int, **extra: Any) -> nn.Module:
    try:
        return timm.create_model(timm_model, num_classes=num_classes, **timm_kwargs, **extra)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise BackboneError(f"timm has no model {timm_model!r}") from None
        raise


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` state dict (what the Hugging Face hub serves timm's weights as)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise BackboneError(f"{path}: corrupt or not a safetensors file ({err})") from None


OFFLINE_HINT = (
    "Without network access, download the weights elsewhere (model.safetensors of the tag's "
    "Hugging Face repo, or Google's ViT-B_16.npz) and give the local file: config backbone.checkpoint "
    "(CLI --checkpoint PATH) with weights 'timm' or 'file'."
)


def _require_hub(timm_model: str, timeout: float = 3.0) -> None:
    """Fail fast, saying how to give a local file, when a timm tag's weights need a hub that is unreachable.

    Passes when the weights are already in the local Hugging Face cache, or the hub's host answers a
    TCP connection within ``timeout`` seconds. ``HF_HUB_OFFLINE=1`` with nothing cached fails at once.
    """
    import socket
    from urllib.parse import urlparse

    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(timm_model)  # a bare architecture name means its default tag
    except Exception:  # noqa: BLE001 (an unknown name: timm's own error below names it)
        return
    hub_id = getattr(cfg, "hf_hub_id", None)
    if cfg is None or not (hub_id or getattr(cfg, "url", None)):
        return  # no such tag, or weights timm cannot fetch: timm's own error names it
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        names = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(repo, n, revision=revision or None), str) for n in names if n):
            return
        if constants.HF_HUB_OFFLINE:
            raise BackboneError(f"weights 'timm' for {timm_model!r}: HF_HUB_OFFLINE is set and {repo} is not "
                                f"in the local cache ({constants.HF_HUB_CACHE}). {OFFLINE_HINT}")
        url = constants.ENDPOINT
    else:
        url = cfg.url
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise BackboneError(f"weights 'timm' for {timm_model!r}: cannot reach {parsed.hostname}:{port} "
                            f"({type(err).__name__}: {err}). {OFFLINE_HINT}") from None


def create_bundled(
    timm_model: str,
    timm_kwargs: dict[str, Any],
    *,
    num_classes: int,
    path: str | os.PathLike | None = None,
) -> Any:
    """A backbone with the bundled weights (checksum verified) and a fresh head.

    Args:
        timm_model, timm_kwargs: the architecture asked for; must equal the asset's.
        num_classes: outputs of the new head.
        path: another asset file (default: the shipped one).
    """
    asset = bundled_path(path)
    obj = read_asset(asset)
    for key, want in (("timm_model", timm_model), ("timm_kwargs", dict(timm_kwargs))):
        if obj[key] != want:
            raise AssetError(f"{asset}: {key} is {obj[key]!r}, but {want!r} was asked for")
    model = create_backbone(timm_model, timm_kwargs, num_classes=num_classes, weights="random")
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": tuple(obj["mean"]), "std": tuple(obj["std"])}
    _load_weights(model, obj["state_dict"], asset)
    _new_head(model, num_classes)
    return model


def create_backbone(
    timm_model: str,
    timm_kwargs: dict[str, Any] | None = None,
    *,
    num_classes: int,
    weights: str = "random",
    checkpoint: str | os.PathLike | None = None,
) -> nn.Module:
    """Create a timm VisionTransformer with a fresh head of ``num_classes`` outputs.

    Args:
        timm_model: timm model name, or for ``weights="timm"`` a pretrained tag such as
            ``vit_base_patch16_224.orig_in21k``.
        timm_kwargs: extra ``timm.create_model`` arguments (img_size, patch_size, embed_dim, depth, ...).
        num_classes: outputs of the new head.
        weights: ``"random"`` (timm init), ``"timm"`` (timm's pretrained weights for the tag; with
            ``checkpoint`` set, read from that local file via ``pretrained_cfg_overlay``) or ``"file"``
            (a local checkpoint: our cached backbone format, a plain or wrapped state dict, or a
            JAX ``.npz``) or ``"bundled"`` (the backbone shipped with the package, see models/assets.py).
        checkpoint: local file for ``"file"`` (required) and optionally ``"timm"`` / ``"bundled"``.

    Returns:
        The model; ``model.pretrained_cfg`` carries the normalisation mean/std to use with it.
    """
    timm_kwargs = dict(timm_kwargs or {})
    for key in ("num_classes", "pretrained", "checkpoint_path"):
        if key in timm_kwargs:
            raise BackboneError(f"timm_kwargs: key {key!r} is set by create_backbone, remove it")
    if weights not in WEIGHT_SOURCES:
        raise BackboneError(f"weights={weights!r}: expected one of {', '.join(WEIGHT_SOURCES)}")

    if weights == "bundled":  # shipped in petlprune/assets (or `checkpoint`), checksum verified first
        return create_bundled(timm_model, timm_kwargs, num_classes=num_classes, path=checkpoint)
    if weights == "random":
        model = _create(timm_model, timm_kwargs, num_classes)
    elif weights == "timm":
        extra: dict[str, Any] = {"pretrained": True}
        if checkpoint is not None:
            if not Path(checkpoint).is_file():
                raise BackboneError(f"{checkpoint}: checkpoint not found")
            extra["pretrained_cfg_overlay"] = {"file": str(checkpoint)}
        else:
            _require_hub(timm_model)  # seconds, not the hub client's ~48 s of retries, when offline
        try:
            model = _create(timm_model, timm_kwargs, num_classes, **extra)
        except BackboneError:
            raise
        except Exception as err:  # the hub / URL stack raises many types when offline
            raise BackboneError(
                f"could not load timm pretrained weights for {timm_model!r} ({type(err).__name__}: {err}). "
                "Without network access, download the weights elsewhere and pass them as a local file "
                "(weights='timm' with checkpoint=PATH, or weights='file')."
            ) from None
        _new_head(model, num_classes)
    else:
        if checkpoint is None:
            raise BackboneError("weights='file' needs checkpoint=PATH")
        path = Path(checkpoint)
        model = _create(timm_model, timm_kwargs, num_classes)
        if not path.is_file():
            raise BackboneError(f"{path}: checkpoint not found")
        if path.suffix == ".npz":  # Google's original ViT (ViT-B_16.npz, what SLS and V-PETL Bench load)
            try:
                model.load_pretrained(str(path))  # timm's reader of the JAX/Flax key layout
            except (KeyError, ValueError, RuntimeError) as err:
                raise BackboneError(f"{path}: not a ViT .npz checkpoint for {timm_model!r} "
                                    f"({type(err).__name__}: {err})") from None
        else:
            obj = _read_safetensors(path) if path.suffix == ".safetensors" else load_checkpoint(path)
            if isinstance(obj, dict) and "timm_model" in obj:
                obj = read_backbone(path)
                for key, want in (("timm_model", timm_model), ("timm_kwargs", timm_kwargs)):
                    if obj[key] != want:
                        raise BackboneError(f"{path}: key {key!r} is {obj[key]!r}, but {want!r} was asked for")
                model.pretrained_cfg = {**model.pretrained_cfg, "mean": tuple(obj["mean"]),
                                        "std": tuple(obj["std"])}
                obj = obj["state_dict"]
            _load_weights(model, _unwrap_state_dict(obj, path), path)
        _new_head(model, num_classes)
    return model
