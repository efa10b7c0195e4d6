"""Atomic writes, safe checkpoint loading and run provenance.

Every file of the results tree is written to a temporary sibling and renamed into place, so a job
killed mid-write never leaves a truncated file that a later job would read as valid.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "CheckpointError",
    "OutputError",
    "check_writable",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
    "load_checkpoint",
    "read_json",
    "provenance",
]

PROVENANCE_PACKAGES = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "openTSNE", "petlprune")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or holds more than plain tensors."""


class OutputError(OSError):
    """An output path cannot be written (its folder is a file, or not writable)."""


def check_writable(path: str | os.PathLike) -> None:
    """Fail before any work if ``path`` (a file or folder to create) cannot be written; creates nothing.

    The nearest existing ancestor of ``path`` must be a folder this process may write into; otherwise
    a stage would train for minutes and only then fail on its first write.

    Raises:
        OutputError: naming ``path`` and the ancestor that blocks it.
    """
    path = Path(path)
    probe = path.absolute().parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{path}: cannot write the output here: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write the output here: no write permission on {probe}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600 files; results should follow the umask
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. NaN/inf are refused (they are not JSON)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``; any failure names the file and the cause."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: it holds more than tensors and plain containers "
            f"(weights_only=True): {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({err})") from None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(**extra: Any) -> dict[str, Any]:
    """Package versions, git commit and dirty flag, host; ``extra`` (seed, device, times) merged in."""
    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    info = {
        "versions": versions,
        "python": platform.python_version(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "host": platform.node(),
        "platform": platform.platform(),
    }
    info.update(extra)
    return info
