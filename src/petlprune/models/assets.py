"""The backbone shipped with the package (``backbone.weights: bundled``): write, verify and load it.

The asset is one safetensors file (weights without a head, float32; architecture and normalisation
as string metadata) with a ``sha256sum``-format checksum file and a provenance JSON next to it. The
checksum is verified before the weights are used: by the workflow when it builds the DAG (this
module's path and checksum functions import neither torch nor safetensors, so that costs
milliseconds) and again by the loader.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "ASSET_DIR",
    "BUNDLED_NAME",
    "AssetError",
    "bundled_path",
    "checksum_path",
    "provenance_path",
    "sha256_of",
    "verify_asset",
    "write_asset",
    "read_asset",
]

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_NAME = "embedded-vit"
_META_KEYS = ("timm_model", "timm_kwargs", "mean", "std")
_META_ENTRY = "petlprune"


class AssetError(RuntimeError):
    """A bundled asset is missing, corrupt, swapped or does not fit the asked-for architecture."""


def bundled_path(path: str | os.PathLike | None = None) -> Path:
    """The asset file: ``path`` if given, else the one shipped in ``petlprune/assets``."""
    return Path(path) if path is not None else ASSET_DIR / f"{BUNDLED_NAME}.safetensors"


def checksum_path(asset: str | os.PathLike) -> Path:
    """``NAME.safetensors.sha256`` next to the asset."""
    asset = Path(asset)
    return asset.with_name(asset.name + ".sha256")


def provenance_path(asset: str | os.PathLike) -> Path:
    """``NAME.json`` next to the asset."""
    return Path(asset).with_suffix(".json")


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_asset(asset: str | os.PathLike | None = None) -> str:
    """Check an asset against its checksum file; return the checksum.

    Args:
        asset: the safetensors file (default: the shipped one).

    Raises:
        AssetError: naming the file that is missing, or whose bytes do not match its checksum.
    """
    asset = bundled_path(asset)
    sums = checksum_path(asset)
    for path in (asset, sums):
        if not path.is_file():
            raise AssetError(f"{path}: bundled backbone file not found (regenerate it: see book/data.md)")
    fields = sums.read_text().split()
    if not fields or len(fields[0]) != 64:
        raise AssetError(f"{sums}: not a sha256sum line ('<64 hex digits>  {asset.name}')")
    want, got = fields[0].lower(), sha256_of(asset)
    if got != want:
        raise AssetError(
            f"{asset}: checksum mismatch: the file's sha256 is {got}, {sums.name} expects {want}. "
            "The file is corrupt or not the shipped one; restore it (git checkout) or regenerate it "
            "with workflow/config/backbone.yaml."
        )
    return got


def write_asset(
    out_dir: str | os.PathLike,
    state_dict: dict[str, Any],
    *,
    timm_model: str,
    timm_kwargs: dict[str, Any],
    mean: list[float],
    std: list[float],
    provenance: dict[str, Any],
    name: str = BUNDLED_NAME,
) -> Path:
    """Write ``NAME.safetensors``, its ``.sha256`` and ``NAME.json`` (provenance + checksum) to ``out_dir``.

    The safetensors file holds only weights and architecture, nothing run-dependent (no time, no
    host), so the same weights always give the same bytes and the same checksum.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    asset = out / f"{name}.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in sorted(state_dict.items())}
    # One metadata entry: safetensors writes several in hash order, which changes between runs.
    meta = {"timm_model": timm_model, "timm_kwargs": dict(timm_kwargs),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    save_file(tensors, str(asset), metadata={_META_ENTRY: json.dumps(meta, sort_keys=True)})
    digest = sha256_of(asset)
    checksum_path(asset).write_text(f"{digest}  {asset.name}\n")
    record = {"file": asset.name, "sha256": digest, "bytes": asset.stat().st_size, **provenance}
    provenance_path(asset).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return asset


def read_asset(asset: str | os.PathLike | None = None) -> dict[str, Any]:
    """Verify and load an asset as ``{"timm_model", "timm_kwargs", "state_dict", "mean", "std"}``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    asset = bundled_path(asset)
    verify_asset(asset)
    try:
        with safe_open(str(asset), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(asset))
    except (SafetensorError, OSError, ValueError) as err:
        raise AssetError(f"{asset}: not a readable safetensors file ({err})") from None
    try:
        arch = json.loads(meta[_META_ENTRY])
    except (KeyError, json.JSONDecodeError):
        raise AssetError(f"{asset}: no valid {_META_ENTRY!r} metadata entry (not a petlprune asset)") from None
    missing = [k for k in _META_KEYS if k not in arch]
    if missing:
        raise AssetError(f"{asset}: metadata lacks key(s) {', '.join(missing)}")
    return {**{k: arch[k] for k in _META_KEYS}, "state_dict": state}
