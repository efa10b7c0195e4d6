"""VTAB-1k list-file datasets: the embedded tasks and the real benchmark, read the same way.

A split is ``{root}/{split}.txt`` with one ``relative/path label`` per line (the lists distributed
with NOAH: train800, val200, train800val200, test). Transforms follow the VTAB-1k protocol used by
the PETL papers: resize to a square (bicubic), to tensor, normalise; no augmentation.

A copy of the benchmark is pinned by a checksum manifest in ``sha256sum`` format
(``<hex>  <task>/<file>`` per line, paths relative to the manifest's folder): ``import_vtab_folder``
checks every entry of its task before registering it, so a partial or altered copy stops the data job.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from torchvision import transforms

__all__ = [
    "DatasetError",
    "VTAB_SPLITS",
    "load_meta",
    "read_list_file",
    "build_transform",
    "VTABDataset",
    "make_loader",
    "default_workers",
    "read_manifest",
    "check_manifest",
    "import_vtab_folder",
]

VTAB_SPLITS = ("train800", "val200", "train800val200", "test")


class DatasetError(ValueError):
    """A dataset folder, list file, list line or image is missing or invalid."""


def load_meta(root: str | os.PathLike) -> dict[str, Any]:
    """Read ``{root}/meta.json``; an empty dict when the folder has none (the real VTAB-1k lists).

    Raises:
        DatasetError: the folder does not exist, or the file exists but is not a JSON object with
            consistent class fields.
    """
    if not Path(root).is_dir():  # say so here: callers read meta first, a list file error would mislead
        raise DatasetError(f"{root}: dataset folder not found")
    path = Path(root) / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    classes, num = meta.get("classes"), meta.get("num_classes")
    if num is not None and (not isinstance(num, int) or num < 1):
        raise DatasetError(f"{path}: 'num_classes' must be a positive integer, got {num!r}")
    if classes is not None and (not isinstance(classes, list) or (num is not None and len(classes) != num)):
        raise DatasetError(f"{path}: 'classes' must be a list of num_classes={num} names")
    return meta


def read_list_file(path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """Parse a list file into ``(relative path, label, line number)``; blank lines are skipped.

    Raises:
        DatasetError: the file is missing, or a line is not ``path label`` with an integer label.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: list file not found")
    entries = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)  # paths may contain spaces; the label is the last field
            if len(parts) != 2:
                raise DatasetError(f"{path}:{lineno}: malformed line {text!r}: expected 'path label'")
            rel, label = parts
            try:
                value = int(label)
            except ValueError:
                raise DatasetError(
                    f"{path}:{lineno}: malformed line {text!r}: label {label!r} is not an integer"
                ) from None
            entries.append((rel, value, lineno))
    return entries


def build_transform(
    image_size: int, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)
) -> transforms.Compose:
    """PIL RGB image -> resize to (image_size, image_size), bicubic -> tensor in [0, 1] -> normalise."""
    from torchvision import transforms  # imported here: torchvision costs seconds to import

    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


class VTABDataset(Dataset):
    """One split of a VTAB-1k-layout folder.

    Everything but image decoding is validated at construction: a missing list file, a malformed
    line, a missing image or a label outside [0, num_classes) raises :class:`DatasetError` naming the
    list file and line. A corrupt image raises it when loaded (at construction with ``cache=True``).

    Args:
        root: the task folder.
        split: list file stem, e.g. ``train800val200`` or ``test``.
        image_size: side of the square network input.
        mean, std: per-channel normalisation.
        num_classes: used when the folder has no meta.json; default max label + 1.
        cache: decode and resize every image once into one uint8 tensor (N, 3, H, W).
        cache_threads: threads decoding the cache (PIL releases the GIL while decoding and
            resizing); default torch's intra-op thread count. The result does not depend on it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        image_size: int,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        num_classes: int | None = None,
        cache: bool = False,
        cache_threads: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.image_size = int(image_size)
        self.list_file = self.root / f"{split}.txt"
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset folder not found")
        meta = load_meta(self.root)
        entries = read_list_file(self.list_file)
        if not entries:
            raise DatasetError(f"{self.list_file}: list file is empty")

        if meta.get("num_classes") is not None:
            if num_classes is not None and num_classes != meta["num_classes"]:
                raise DatasetError(
                    f"{self.root / 'meta.json'}: num_classes={meta['num_classes']} but "
                    f"num_classes={num_classes} was asked for"
                )
            num_classes = meta["num_classes"]
        elif num_classes is None:
            num_classes = max(label for _, label, _ in entries) + 1
        self.num_classes = int(num_classes)
        self.classes: list[str] = list(meta.get("classes") or [str(i) for i in range(self.num_classes)])

        self.paths: list[Path] = []
        self.lines: list[int] = []
        self.labels: list[int] = []
        for rel, label, lineno in entries:
            where = f"{self.list_file}:{lineno}"
            if not 0 <= label < self.num_classes:
                raise DatasetError(f"{where}: label {label} outside [0, {self.num_classes}) for image {rel}")
            image_path = self.root / rel
            if not image_path.is_file():
                raise DatasetError(f"{where}: image not found: {image_path}")
            self.paths.append(image_path)
            self.labels.append(label)
            self.lines.append(lineno)

        self.transform = build_transform(self.image_size, mean, std)
        self._resize, _, self._normalize = self.transform.transforms
        self._cache: torch.Tensor | None = None
        if cache:
            # (N, 3, H, W) uint8: the resized pixels exactly as ToTensor would see them.
            self._cache = self._decode_all(cache_threads)

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB; failures name the image and the list line."""
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise DatasetError(
                f"{self.list_file}:{self.lines[index]}: cannot read image {path} ({err})"
            ) from None

    def _resized_uint8(self, index: int) -> torch.Tensor:
        array = np.asarray(self._resize(self.load_image(index)), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)

    def _decode_all(self, threads: int | None = None) -> torch.Tensor:
        # A VTAB-1k test split at 224 px is up to 74k images: decoding them one by one in the main
        # process would dominate a short GPU job. map() keeps the order, so the tensor is identical.
        threads = max(1, int(threads or torch.get_num_threads()))
        out = torch.empty((len(self), 3, self.image_size, self.image_size), dtype=torch.uint8)

        def fill(i: int) -> None:
            out[i] = self._resized_uint8(i)

        if threads == 1 or len(self) < 2:
            for i in range(len(self)):
                fill(i)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(fill, range(len(self))))
        return out

    def pixels(self) -> torch.Tensor:
        """All images resized, as one uint8 tensor (N, 3, H, W) (the cache when there is one)."""
        if self._cache is not None:
            return self._cache
        return self._decode_all(1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._cache is None:
            return self.transform(self.load_image(index)), self.labels[index]
        x = self._cache[index].float().div(255)  # same arithmetic as ToTensor
        return self._normalize(x), self.labels[index]

    def __repr__(self) -> str:
        return (
            f"VTABDataset(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"num_classes={self.num_classes}, image_size={self.image_size}, cached={self._cache is not None})"
        )


def default_workers(cuda: bool, cpus: int | None = None) -> int:
    """Loader worker processes: none on CPU (the training threads need the cores, and a worker costs
    more than it saves on small images); on a GPU, up to 4, leaving half of the CPUs to the trainer.

    Args:
        cuda: whether batches feed a GPU.
        cpus: CPUs this process may use (default: its affinity mask, e.g. Slurm's --cpus-per-task).
    """
    if not cuda:
        return 0
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cpus // 2))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    workers: int | None = None,
    drop_last: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (its own seeded ``torch.Generator``).

    The order is drawn in the main process, and items carry no randomness (no augmentation), so
    worker processes and pinned memory change the speed only, never the batches.

    Args:
        dataset: any map-style dataset.
        batch_size: images per batch.
        shuffle: reshuffle every epoch (the sequence of epochs is fixed by ``seed``).
        seed: seed of the loader's generator.
        workers: worker processes (0: load in the main process); default ``default_workers``.
        drop_last: drop the last incomplete batch.
        pin_memory: page-locked batches for asynchronous host-to-GPU copies (the trainer copies
            with ``non_blocking=True``); default: when CUDA is available.
    """
    cuda = torch.cuda.is_available()
    if workers is None:
        workers = default_workers(cuda)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=workers > 0,
        pin_memory=cuda if pin_memory is None else pin_memory,
    )


def read_manifest(path: str | os.PathLike) -> dict[str, str]:
    """Parse a ``sha256sum``-format manifest into ``{relative path: hex digest}``.

    Raises:
        DatasetError: the file is missing, or a line is not ``<64 hex>  <path>``; names file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: checksum manifest not found")
    entries: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        digest, _, rel = text.partition(" ")
        rel = rel.lstrip(" *")  # sha256sum writes "  path" (text mode) or " *path" (binary mode)
        if len(digest) != 64 or not all(c in "0123456789abcdefABCDEF" for c in digest) or not rel:
            raise DatasetError(f"{path}:{lineno}: malformed line {text!r}: expected '<sha256 hex>  <path>'")
        entries[Path(rel).as_posix().removeprefix("./")] = digest.lower()
    return entries


def check_manifest(manifest: str | os.PathLike, task_dir: str | os.PathLike) -> int:
    """Check every manifest entry under ``task_dir`` against the files; the number of files checked.

    Entries are relative to the manifest's folder, which must contain ``task_dir``. The task's list
    files must all be listed (images may be, and are then checked too).

    Raises:
        DatasetError: a listed file is missing or differs, a list file is not listed, or ``task_dir``
            is not under the manifest's folder; the message names the manifest, the file and both digests.
    """
    from petlprune.data.writer import sha256_file

    manifest, task_dir = Path(manifest), Path(task_dir)
    entries = read_manifest(manifest)
    base = manifest.resolve().parent
    try:
        prefix = task_dir.resolve().relative_to(base).as_posix() + "/"
    except ValueError:
        raise DatasetError(f"{manifest}: {task_dir} is not inside the manifest's folder {base}") from None
    mine = {rel: digest for rel, digest in entries.items() if rel.startswith(prefix)}
    unlisted = [f"{prefix}{split}.txt" for split in VTAB_SPLITS
                if (task_dir / f"{split}.txt").is_file() and f"{prefix}{split}.txt" not in mine]
    if unlisted:
        raise DatasetError(f"{manifest}: no checksum for {', '.join(unlisted)}; re-make the manifest "
                           "(book: data preparation) or restore the task folder")
    for rel, expected in sorted(mine.items()):
        target = base / rel
        if not target.is_file():
            raise DatasetError(f"{manifest}: {rel} is listed but missing ({target})")
        got = sha256_file(target)
        if got != expected:
            raise DatasetError(f"{manifest}: sha256 mismatch for {rel}: manifest {expected}, file {got}; "
                               "the copy differs from the one the manifest was made from")
    return len(mine)


def import_vtab_folder(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str,
    num_classes: int | None = None,
    splits: Sequence[str] = VTAB_SPLITS,
    manifest: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Check a real VTAB-1k task folder and register it in the results tree (no image is copied).

    With ``manifest``, the folder's files are first checked against it (``check_manifest``). Every
    split is then validated as :class:`VTABDataset` does at construction (list lines, labels,
    image files); ``out_dir`` then gets the list files with image paths made absolute (pointing
    into ``src``) and a meta.json of kind ``vtab``, written atomically.

    Args:
        src: the task folder of the NOAH VTAB-1k release (``{src}/{split}.txt``).
        out_dir: destination folder.
        name: task name for meta.json.
        num_classes: default max label + 1 over all splits.
        splits: list files required.
        manifest: a ``sha256sum``-format manifest covering ``src`` (see ``check_manifest``).
    """
    import shutil
    import tempfile

    from petlprune.data.writer import replace_dir, sha256_file

    src = Path(src).resolve()
    if not src.is_dir():
        raise DatasetError(f"{src}: VTAB-1k task folder not found")
    checked = check_manifest(manifest, src) if manifest is not None else 0
    entries = {split: read_list_file(src / f"{split}.txt") for split in splits}
    if num_classes is None:
        num_classes = max(label for rows in entries.values() for _, label, _ in rows) + 1
    for split in splits:  # full validation, images not decoded
        VTABDataset(src, split, image_size=1, num_classes=num_classes)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        sha, counts = {}, {}
        for split, rows in entries.items():
            text = "".join(f"{(src / rel).resolve()} {label}\n" for rel, label, _ in rows)
            (tmp / f"{split}.txt").write_text(text)
            sha[f"{split}.txt"] = sha256_file(tmp / f"{split}.txt")
            counts[split] = len(rows)
        meta = {
            "name": name,
            "classes": [str(i) for i in range(num_classes)],
            "num_classes": int(num_classes),
            "counts": counts,
            "sha256": sha,
            "image_size": None,
            "seed": None,
            "kind": "vtab",
            "description": f"VTAB-1k task {name} from {src}; list files point at its images.",
            "source": str(src),
        }
        if manifest is not None:
            meta["manifest"] = {"path": str(Path(manifest).resolve()), "sha256": sha256_file(manifest),
                                "files_checked": checked}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return meta
