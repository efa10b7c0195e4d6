"""The file formats stages exchange: Scores (``score/{key}.json``) and Plan (``plan/{key}-{budget}.json``).

Torch-free, so that the plan stage and ``report`` read them without importing a model. A Plan is
validated in one place, :func:`check_plan`: by ``Plan`` when one is built or loaded, and by
``report.load`` when it reads a results tree (which keeps the JSON as a dict).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from petlprune.io import atomic_path, atomic_write_json, read_json

__all__ = ["Scores", "Plan", "check_plan"]


def check_plan(data: dict[str, Any], where: str = "plan") -> None:
    """Raise ``ValueError`` (naming ``where`` and the key) unless ``data`` is a valid Plan as JSON:
    ``kept_blocks`` ascending unique block indices, ``depth`` a non-negative integer."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for key in ("depth", "kept_blocks"):
        if key not in data:
            raise ValueError(f"{where}: missing key {key!r}")
    depth, kept = data["depth"], data["kept_blocks"]
    if not isinstance(kept, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in kept) \
            or kept != sorted(set(kept)):
        raise ValueError(f"{where}: 'kept_blocks' must be ascending unique block indices, got {kept!r}")
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"{where}: 'depth' must be a non-negative integer, got {depth!r}")


@dataclass
class Scores:
    """What ``score`` measured: one value per unit (block, adapter position, channel group).

    Serialised as ``{"method", "scores", "extra", "seconds"}`` (CONTRIBUTING.md). A value may be
    None for a unit that was not measured (e.g. SLS's early stop). ``arrays`` (named numpy arrays a
    report needs: embeddings, matrices) go to a sidecar ``.npz`` next to the JSON, named in its
    ``"arrays"`` key, and come back with :meth:`load`.
    """

    method: str
    values: list[float | None]
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    arrays: dict[str, Any] = field(default_factory=dict, repr=False)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        data: dict[str, Any] = {"method": self.method, "scores": list(self.values), "extra": self.extra,
                                "seconds": self.seconds}
        if self.arrays:
            import numpy as np

            sidecar = path.with_suffix(".npz")
            with atomic_path(sidecar) as tmp, open(tmp, "wb") as f:
                np.savez(f, **self.arrays)
            data["arrays"] = sidecar.name
        atomic_write_json(path, data)

    @classmethod
    def load(cls, path: str | Path) -> Scores:
        path = Path(path)
        data = read_json(path)
        missing = {"method", "scores"} - set(data)
        if missing:
            raise ValueError(f"{path}: not a scores file, missing key(s) {sorted(missing)}")
        arrays: dict[str, Any] = {}
        if data.get("arrays"):
            import numpy as np

            sidecar = path.parent / data["arrays"]
            if not sidecar.is_file():
                raise FileNotFoundError(f"{path}: its arrays file {sidecar} is missing")
            with np.load(sidecar, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        return cls(data["method"], data["scores"], data.get("extra", {}), data.get("seconds", 0.0), arrays)


@dataclass
class Plan:
    """The pruning decision and nothing else (serialised as JSON in ``plan/{method}-{budget}.json``).

    Args:
        method: registered method name.
        budget: the budget text as requested (``matched`` stays ``matched``).
        depth: number of blocks in the pruned model's forward path.
        kept_blocks: 0-based indices of the kept blocks, ascending.
        sharing: for adapter sharing, {pruned position: serving position}.
        masks: channel masks, or a path to them.
        scores: the scores the decision came from.
        decision_seconds: time spent deciding (scoring + planning).
        notes: anything a reader of the result must know (e.g. an edge case taken).
    """

    method: str
    budget: str
    depth: int
    kept_blocks: list[int]
    sharing: dict[str, int] | None = None
    masks: Any = None
    scores: list[float] | None = None
    decision_seconds: float = 0.0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # numpy integers from a scorer become ints; then the one rule every Plan meets
        self.kept_blocks = [int(i) for i in self.kept_blocks]
        if not isinstance(self.depth, bool) and hasattr(self.depth, "__index__"):
            self.depth = int(self.depth)
        check_plan({"method": self.method, "depth": self.depth, "kept_blocks": self.kept_blocks},
                   f"plan {self.method}")

    @property
    def is_prefix(self) -> bool:
        """True when the kept blocks are 0..depth-1: the Plan is then a single integer."""
        return self.kept_blocks == list(range(len(self.kept_blocks)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        data = read_json(path)
        check_plan(data, str(path))
        return cls.from_dict(data)

    def __str__(self) -> str:
        return json.dumps(self.to_dict())
