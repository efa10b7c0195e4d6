"""Read the results tree into one tidy table: one row per task × petl × seed × method × budget.

The tree is described in CONTRIBUTING.md. Only what exists is read: an absent method, budget or
seed is simply not a row. A result directory whose ``metrics.json`` is missing (a job still running
or failed) is skipped with a warning; a file that exists but is malformed is an error naming it.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from petlprune.core.budgets import budget_order
from petlprune.core.formats import check_plan
from petlprune.io import atomic_path, read_json

__all__ = [
    "COLUMNS",
    "FINETUNE",
    "ResultsError",
    "RunDir",
    "split_key",
    "split_result_dir",
    "find_runs",
    "load_results",
    "read_summary",
    "write_summary",
    "collect_provenance",
    "ppt",
    "log_path",
]

FINETUNE = "finetune"  # method name of the unpruned PETL model (its budget is "none")
_SEED_RE = re.compile(r"^seed(\d+)$")
_DRAW_RE = re.compile(r"^(?P<method>[A-Za-z0-9_]+)\.(?P<draw>\d+)$")

# Column order of the tidy table (and of results/summary.csv). Batch sizes 1 and 64 are always
# columns (empty when not measured); other measured batch sizes are appended.
COLUMNS = [
    "task", "petl", "seed", "method", "draw", "key", "budget",
    "depth", "kept_blocks",
    "top1", "top1_lo", "top1_hi", "n_eval", "chance", "collapsed", "top1_before_retrain", "top1_drop",
    "params_forward", "params_trainable", "params_stored", "params_stored_model",
    "stored_petl", "stored_head", "stored_plan", "stored_backbone",
    "flops",
    "throughput_b1", "latency_b1_ms", "throughput_b64", "latency_b64_ms",
    "speedup_b1", "speedup_b64",
    "decision_seconds", "ppt",
    "eval_split", "train_split", "device", "threads", "git_commit", "predictions_path",
]


class ResultsError(ValueError):
    """A file of the results tree is malformed or contradicts its place in the tree."""


def split_key(key: str) -> tuple[str, int | None]:
    """Split a method key into (method, draw): ``random.1`` → ("random", 1), ``sls`` → ("sls", None)."""
    m = _DRAW_RE.match(key)
    if m:
        return m["method"], int(m["draw"])
    return key, None


def split_result_dir(name: str) -> tuple[str, str]:
    """``{method}-{budget}`` → (method key, budget); method names hold no hyphen, budgets neither."""
    key, sep, budget = name.rpartition("-")
    if not sep or not key or not budget:
        raise ResultsError(f"{name!r}: a result directory is named '{{method}}-{{budget}}'")
    return key, budget


def _get(obj: dict[str, Any], key: str, path: Path) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise ResultsError(f"{path}: missing key {key!r}") from None
    except TypeError:
        raise ResultsError(f"{path}: expected a JSON object, got {type(obj).__name__}") from None


def _num(value: Any) -> float:
    """JSON number or null → float (null/absent → NaN)."""
    return math.nan if value is None else float(value)


def _percent(value: Any, key: str, path: Path) -> float:
    """metrics.json accuracies are fractions in [0, 1] (``train.evaluate``); the report shows percent."""
    value = _num(value)
    if not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise ResultsError(f"{path}: {key}={value!r} is not a fraction in [0, 1]")
    return 100.0 * value


@dataclass(frozen=True)
class RunDir:
    """One fine-tuning run, ``results/runs/{task}/{petl}/seed{seed}``, and what was derived from it.

    Args:
        root: the run directory.
        task: task name.
        petl: PETL method.
        seed: seed.
    """

    root: Path
    task: str
    petl: str
    seed: int

    @classmethod
    def locate(cls, results_dir: str | Path, task: str, petl: str, seed: int) -> RunDir:
        root = Path(results_dir) / "runs" / task / petl / f"seed{int(seed)}"
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such run (task={task!r}, petl={petl!r}, seed={seed})")
        return cls(root, task, petl, int(seed))

    def result_dirs(self) -> list[Path]:
        """``pruned/{key}-{budget}/`` directories, sorted by name."""
        pruned = self.root / "pruned"
        return sorted(p for p in pruned.iterdir() if p.is_dir()) if pruned.is_dir() else []

    def keys(self, method: str | None = None) -> list[str]:
        """Method keys with a result or a score here (``random.0``, ...), optionally of one method."""
        found = {split_result_dir(p.name)[0] for p in self.result_dirs()}
        if (self.root / "score").is_dir():
            found |= {p.stem for p in (self.root / "score").glob("*.json")}
        return sorted(k for k in found if method is None or split_key(k)[0] == method)

    def scores(self, key: str) -> dict[str, Any] | None:
        """``score/{key}.json`` as {"method", "scores", "extra", "seconds"}, or None if absent.

        The per-unit values are read from ``scores`` (CONTRIBUTING.md) or ``values`` (the field
        name of ``methods.base.Scores``); nulls (units not scored, e.g. SLS's early stop) become NaN.
        """
        path = self.root / "score" / f"{key}.json"
        if not path.is_file():
            return None
        data = read_json(path)
        if not isinstance(data, dict):
            raise ResultsError(f"{path}: expected a JSON object")
        values = data.get("scores", data.get("values"))
        if not isinstance(values, list):
            raise ResultsError(f"{path}: missing key 'scores' (a list of per-unit values)")
        return {
            "method": data.get("method", key),
            "scores": np.array([_num(v) for v in values], dtype=float),
            "extra": data.get("extra") or {},
            "seconds": _num(data.get("seconds")),
        }

    def sidecar(self, key: str) -> dict[str, np.ndarray] | None:
        """``score/{key}.npz`` (arrays a scorer saved next to its json, e.g. SLS's t-SNE maps)."""
        path = self.root / "score" / f"{key}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as err:
            raise ResultsError(f"{path}: unreadable npz ({err})") from None

    def plan(self, key: str, budget: str) -> dict[str, Any] | None:
        """``plan/{key}-{budget}.json`` (a Plan as JSON, core/formats.py), checked by the Plan's own rule
        (``check_plan``), or None if absent."""
        path = self.root / "plan" / f"{key}-{budget}.json"
        if not path.is_file():
            return None
        plan = read_json(path)
        try:
            check_plan(plan, str(path))
        except ValueError as err:
            raise ResultsError(str(err)) from None
        plan.setdefault("decision_seconds", None)
        return plan

    def plans(self, method: str) -> dict[tuple[str, str], dict[str, Any]]:
        """Every Plan of one method (all draws, all budgets), keyed by (key, budget)."""
        out = {}
        plan_dir = self.root / "plan"
        if plan_dir.is_dir():
            for path in sorted(plan_dir.glob("*.json")):
                key, budget = split_result_dir(path.stem)
                if split_key(key)[0] == method:
                    out[(key, budget)] = self.plan(key, budget)
        return out

    def scored(self, method: str) -> list[tuple[str, dict[str, Any], dict[tuple[str, str], dict[str, Any]]]]:
        """``(key, scores, plans)`` for every key of ``method`` that has a scores file: its Plans keyed by
        (key, budget), in budget order. What a method's report section iterates over."""

        plans = self.plans(method)
        out = []
        for key in self.keys(method):
            scores = self.scores(key)
            if scores is not None:
                own = sorted(((kb, p) for kb, p in plans.items() if kb[0] == key), key=lambda kv: budget_order(kv[0][1]))
                out.append((key, scores, dict(own)))
        return out

    def labels(self) -> np.ndarray | None:
        path = self.root / "features.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as npz:
            if "labels" not in npz.files:
                raise ResultsError(f"{path}: missing array 'labels'")
            return npz["labels"]


def find_runs(results_dir: str | Path) -> list[RunDir]:
    """Every ``runs/{task}/{petl}/seed{seed}`` directory, sorted by (task, petl, seed)."""
    runs_root = Path(results_dir) / "runs"
    if not runs_root.is_dir():
        raise FileNotFoundError(f"{runs_root}: no runs directory (has the pipeline run?)")
    runs = []
    for seed_dir in runs_root.glob("*/*/*"):
        if not seed_dir.is_dir():
            continue
        m = _SEED_RE.match(seed_dir.name)
        if not m:
            raise ResultsError(f"{seed_dir}: expected a directory named seed<N>")
        runs.append(RunDir(seed_dir, seed_dir.parent.parent.name, seed_dir.parent.name, int(m[1])))
    return sorted(runs, key=lambda r: (r.task, r.petl, r.seed))


def _efficiency_columns(eff: dict[str, Any], path: Path) -> dict[str, Any]:
    row: dict[str, Any] = {
        "params_forward": _num(_get(eff, "params_forward", path)),
        "params_trainable": _num(eff.get("params_trainable")),
        "params_stored": _num(_get(eff, "params_stored", path)),
        # the second storage convention ("stored as a model"): for a method that keeps the backbone's
        # shape (measure writes None) the task's stored form is already everything it keeps
        "params_stored_model": _num(eff["params_stored_as_model"] if eff.get("params_stored_as_model") is not None
                                    else _get(eff, "params_stored", path)),
        "flops": _num(_get(eff, "flops_per_image", path)),
        "device": eff.get("device"),
        "threads": _num(eff.get("threads")),
    }
    breakdown = eff.get("stored_breakdown") or {}
    for part in ("petl", "head", "plan", "backbone"):
        row[f"stored_{part}"] = _num(breakdown.get(part))
    throughput = _get(eff, "throughput", path)
    if not isinstance(throughput, dict):
        raise ResultsError(f"{path}: 'throughput' must map batch size → {{images_per_s, latency_ms}}")
    for bs, entry in throughput.items():
        if not str(bs).isdigit() or not isinstance(entry, dict):
            raise ResultsError(f"{path}: throughput[{bs!r}]: expected a batch size → {{images_per_s, latency_ms}}")
        row[f"throughput_b{bs}"] = _num(_get(entry, "images_per_s", path))
        row[f"latency_b{bs}_ms"] = _num(entry.get("latency_ms"))
    return row


def _note(skipped: list[str] | None, message: str) -> None:
    """A result left out: appended to ``skipped`` when the caller collects them, else a warning."""
    if skipped is None:
        warnings.warn(message, stacklevel=4)
    else:
        skipped.append(message)


def _read_result(run: RunDir, result_dir: Path, key: str, budget: str,
                 skipped: list[str] | None = None) -> dict[str, Any] | None:
    metrics_path = result_dir / "metrics.json"
    if not metrics_path.is_file():
        _note(skipped, f"{result_dir}: no metrics.json (job unfinished?); skipped")
        return None
    metrics = read_json(metrics_path)
    for field, expected in (("task", run.task), ("petl", run.petl), ("seed", run.seed)):
        found = _get(metrics, field, metrics_path)
        if found != expected:
            raise ResultsError(f"{metrics_path}: {field}={found!r} but the file lies under {field} {expected!r}")
    method, draw = split_key(key)
    row: dict[str, Any] = {
        "task": run.task, "petl": run.petl, "seed": run.seed, "method": method, "draw": draw,
        "key": key, "budget": budget,
        "top1": _percent(_get(metrics, "top1", metrics_path), "top1", metrics_path),
        "top1_before_retrain": _percent(metrics.get("top1_before_retrain"), "top1_before_retrain", metrics_path),
        "depth": _num(_get(metrics, "depth", metrics_path)),
        "n_eval": _num(metrics.get("n_eval")),
        "predictions_path": str(result_dir / "predictions.npz") if (result_dir / "predictions.npz").is_file() else np.nan,
        "eval_split": metrics.get("eval_split"),
        "train_split": metrics.get("train_split"),
        "git_commit": (metrics.get("provenance") or {}).get("git_commit"),
    }
    eff_path = result_dir / "efficiency.json"
    if eff_path.is_file():
        row.update(_efficiency_columns(read_json(eff_path), eff_path))
    else:
        _note(skipped, f"{result_dir}: no efficiency.json; its cost columns are empty")
    if key != FINETUNE:
        plan = run.plan(key, budget)
        if plan is not None:
            row["kept_blocks"] = " ".join(map(str, plan["kept_blocks"]))
            row["decision_seconds"] = _num(plan["decision_seconds"])
            if plan["depth"] != row["depth"]:
                raise ResultsError(
                    f"{metrics_path}: depth={row['depth']:g} but its plan says depth={plan['depth']}"
                )
    return row


def log_path(results_dir: str | Path, task: str, petl: str, seed: int, key: str, budget: str) -> Path:
    """The log of the job that trained a result (the workflow's ``logs/`` layout, CONTRIBUTING.md)."""
    logs = Path(results_dir) / "logs"
    if key == FINETUNE:
        return logs / "finetune" / f"{task}-{petl}-seed{int(seed)}.log"
    return logs / "prune" / f"{task}-{petl}-seed{int(seed)}-{key}-{budget}.log"


def ppt(top1_percent: pd.Series | float, params_stored: pd.Series | float) -> pd.Series | float:
    """V-PETL Bench's trade-off: PPT = acc · exp(−log10(P / 1e7 + 1)), P = parameters stored per task."""
    return top1_percent * np.exp(-np.log10(np.asarray(params_stored, dtype=float) / 1e7 + 1.0))


def _finish(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Drops and speed-ups against the same run's finetune, PPT; column order."""
    for col in COLUMNS:
        if col not in df:
            df[col] = np.nan
    run_cols = ["task", "petl", "seed"]
    ref = df[df["method"] == FINETUNE].set_index(run_cols)
    if ref.index.has_duplicates:
        raise ResultsError(f"{where}: more than one finetune row for {ref.index[ref.index.duplicated()].tolist()}")
    joined = df.join(ref, on=run_cols, suffixes=("", "_ref"))
    df["top1_drop"] = joined["top1_ref"] - df["top1"]
    # A speed-up is only a speed-up when both models were timed on the same device with the same
    # number of threads: otherwise it is left empty rather than silently comparing apples to pears.
    same_setup = (joined["device"] == joined["device_ref"]) & (joined["threads"] == joined["threads_ref"])
    for col in [c for c in df.columns if c.startswith("throughput_b")]:
        bs = col.removeprefix("throughput_b")
        df[f"speedup_b{bs}"] = (df[col] / joined[f"{col}_ref"]).where(same_setup)
    df["ppt"] = ppt(df["top1"], df["params_stored"])
    _uncertainty(df, joined)
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[COLUMNS + sorted(extra)]
    df["draw"] = df["draw"].astype("Int64")
    df["seed"] = df["seed"].astype(int)
    df["predictions_path"] = df["predictions_path"].astype("str")
    return df.reset_index(drop=True)


def _uncertainty(df: pd.DataFrame, joined: pd.DataFrame) -> None:
    """Wilson interval of each accuracy, the run's chance rate, and whether the model collapsed.

    Chance is the majority-class rate of the test labels (read from the run's fine-tune
    predictions); a model collapsed when its interval reaches chance, and so does every model pruned
    from a collapsed fine-tune (``collapsed`` is then ``from fine-tune``).
    """
    from petlprune.report.stats import chance_rate, covers_chance, wilson

    lo, hi = [], []
    for i in df.index:
        top1, n = df.at[i, "top1"], df.at[i, "n_eval"]
        if pd.isna(top1) or pd.isna(n) or n <= 0:
            lo.append(np.nan), hi.append(np.nan)
        else:
            a, b = wilson(round(top1 / 100 * n), int(n))
            lo.append(a), hi.append(b)
    df["top1_lo"], df["top1_hi"] = lo, hi
    chance_of: dict[tuple, float] = {}
    for i in df.index[df["method"] == FINETUNE]:
        path = df.at[i, "predictions_path"]
        if isinstance(path, str):
            with np.load(path, allow_pickle=False) as npz:
                chance_of[(df.at[i, "task"], df.at[i, "petl"], df.at[i, "seed"])] = chance_rate(npz["labels"])
    df["chance"] = [chance_of.get((t, p, s), np.nan) for t, p, s in zip(df["task"], df["petl"], df["seed"], strict=True)]
    own = [covers_chance(a, c) for a, c in zip(df["top1_lo"], df["chance"], strict=True)]
    runs = list(zip(df["task"], df["petl"], df["seed"], strict=True))
    ft_collapsed = {k for k, c, m in zip(runs, own, df["method"], strict=True) if c and m == FINETUNE}
    df["collapsed"] = [
        "collapsed" if c else ("from fine-tune" if (t, p, s) in ft_collapsed and m != FINETUNE else "")
        for c, (t, p, s), m in zip(own, runs, df["method"], strict=True)
    ]


def load_results(results_dir: str | Path, skipped: list[str] | None = None) -> pd.DataFrame:
    """The tidy table of every result in the tree (the unpruned fine-tune has method ``finetune``).

    Args:
        results_dir: the ``results/`` directory.
        skipped: when given, a sentence per result left out (no metrics.json) or incomplete (no
            efficiency.json) is appended to it instead of being warned about.

    Returns:
        One row per task × petl × seed × method key × budget with the columns of :data:`COLUMNS`;
        accuracies in percent; ``speedup_b*`` against the unpruned model of the same run.
    """
    rows = []
    for run in find_runs(results_dir):
        finetune_dir = run.root / "finetune"
        if finetune_dir.is_dir():
            row = _read_result(run, finetune_dir, FINETUNE, "none", skipped)
            if row is not None:
                rows.append(row)
        for result_dir in run.result_dirs():
            key, budget = split_result_dir(result_dir.name)
            row = _read_result(run, result_dir, key, budget, skipped)
            if row is not None:
                rows.append(row)
    if not rows:
        raise ResultsError(f"{results_dir}: the results tree holds no result yet")
    return _finish(pd.DataFrame(rows), str(results_dir))


def write_summary(df: pd.DataFrame, path: str | Path) -> None:
    """Write the tidy table as CSV, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_summary(path: str | Path) -> pd.DataFrame:
    """Read ``results/summary.csv`` back with the dtypes :func:`load_results` gives."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no summary table (run `petlprune summary` first)")
    df = pd.read_csv(path, dtype={"kept_blocks": "str", "budget": "str", "key": "str", "git_commit": "str",
                                  "collapsed": "str", "predictions_path": "str"},
                     keep_default_na=True)
    df["collapsed"] = df["collapsed"].fillna("")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: missing columns {missing}")
    df["draw"] = df["draw"].astype("Int64")
    return df


def collect_provenance(results_dir: str | Path) -> pd.DataFrame:
    """Provenance of every metrics.json in the tree: one row per file (path, commit, dirty, versions...)."""
    rows = []
    for run in find_runs(results_dir):
        for d in [run.root / "finetune", *run.result_dirs()]:
            path = d / "metrics.json"
            if not path.is_file():
                continue
            prov = read_json(path).get("provenance") or {}
            row = {
                "path": str(path.relative_to(results_dir)),
                "git_commit": prov.get("git_commit"),
                "git_dirty": prov.get("git_dirty"),
                "device": prov.get("device"),
                "threads": prov.get("threads"),
                "python": prov.get("python"),
                "wall_seconds": _num(prov.get("wall_seconds")),
                "peak_memory_mb": _num(prov.get("peak_memory_mb")),
            }
            for name, version in (prov.get("versions") or {}).items():
                row[f"version:{name}"] = version
            rows.append(row)
    return pd.DataFrame(rows)
