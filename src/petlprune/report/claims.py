"""The headline claims of the four papers, each judged on the results tree: a verdict, its evidence.

A claim compares arms (a method instance at a budget) on the same task, PETL and seed. Accuracy parts
are paired differences over the same test images, per task over its seeds × images
(``stats.seed_image``: seeds and images crossed, so both seed-to-seed and test-image variation are in
the interval) and over tasks as independent strata (``stats.combine_tasks``); speed parts speed-up
ratios from interleaved per-repeat timings (every pair the same way: the largest of their bootstrap
p-values); storage parts exact counts (p 0 when every pair goes the same way). The parts of a claim are
one family: their p-values are adjusted with Holm's method (``stats.family_calls``) and a part is a
win or a loss only when its *adjusted* p < 0.05. The verdict:

- ``supported``: every part is a win after the adjustment;
- ``contradicted``: some part is a loss after the adjustment;
- ``inconclusive``: no loss, but some part is not significant (or could not be measured); each
  accuracy part says its minimum detectable effect (80% power at Holm's strictest level, alpha over
  the parts), so a reader can tell "no difference" from "too few images and seeds to tell";
- ``not run in this tier``: an arm is missing; the verdict names it and the tiers that run it. A claim
  against several alternatives (``Claim.partial``: SLS-2, SGLP-1) is judged on the comparisons that
  ran and names the missing ones; it is not run only when none of its comparisons is.

With one seed (``ClaimResult.caveat``) a verdict is about one trained model per method, not settled.

Equal depth is a pairing: SGLP-1 compares SGLP at SLS's depth (``matched``) and at every fixed depth
``d{K}`` the tier runs it at, each depth a comparison of its own (``SGLP (d6) vs last_k (d6)``).

Collapsed runs (``collapsed`` non-empty in the tidy table) never enter a verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from petlprune.io import read_json
from petlprune.report import stats
from petlprune.report.claim_defs import CLAIMS, FIXED_DEPTH, Arm, Claim, Part, fixed_depth, reference_rows

__all__ = ["CLAIMS", "ClaimResult", "Arm", "evaluate_claims", "reference_rows", "verdict_line", "claim_figure",
           "paired_versus", "describe_difference", "speedup_versus"]

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "supported", "contradicted", "inconclusive", "not run in this tier"
ALPHA = 1 - stats.LEVEL  # family-wise error rate of a claim's parts (Holm)


@dataclass
class ClaimResult:
    """A claim's verdict, why, the evidence table (one row per comparison × task) and the figure data."""

    claim: Claim
    verdict: str
    reason: str
    evidence: pd.DataFrame = field(default_factory=pd.DataFrame)
    excluded: list[str] = field(default_factory=list)
    parts: pd.DataFrame = field(default_factory=pd.DataFrame)  # per part: p_raw, p_holm, call, mde_points
    seeds: int = 0  # seeds of the tier: with one, every statement is about one trained model per method

    @property
    def settled(self) -> bool:
        """A verdict about a method needs seed-to-seed variation: never settled on one seed."""
        return self.seeds >= 2

    @property
    def caveat(self) -> str:
        """What a one-seed verdict is about (empty with several seeds)."""
        if self.seeds == 1 and self.verdict != NOT_RUN:
            return "one seed: about one trained model per method, not settled"
        return ""


# --------------------------------------------------------------------------------------------------
def _pairs(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """Rows of A and B from the same task, PETL and seed (and budget when both are budgets of one kind)."""
    out = []
    for _, ra in a.iterrows():
        same = b[(b["task"] == ra["task"]) & (b["petl"] == ra["petl"]) & (b["seed"] == ra["seed"])]
        if same["budget"].isin([ra["budget"]]).any():
            same = same[same["budget"] == ra["budget"]]
        out += [(ra, rb) for _, rb in same.iterrows()]
    return out


def _predictions(row: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    path = row.get("predictions_path")
    if not isinstance(path, str) or not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        return npz["labels"], npz["pred"]


def _run_strata(pairs: list[tuple[pd.Series, pd.Series]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(labels, pred_a, pred_b) per run (task, PETL, seed, A's budget) for ``stats.combine_seeds``. An
    arm with several rows in one run (random draws) enters with its draws stacked, (draws, images):
    one stratum per run, not one per draw."""
    runs: dict[tuple, dict] = {}
    for ra, rb in pairs:
        pa, pb = _predictions(ra), _predictions(rb)
        if pa is None or pb is None:
            continue
        run = runs.setdefault((ra["task"], ra["petl"], ra["seed"], ra["budget"]), {"labels": pa[0], "a": {}, "b": {}})
        for side, row, (labels, pred) in (("a", ra, pa), ("b", rb, pb)):
            if not np.array_equal(labels, run["labels"]):
                raise ValueError(f"{row.get('predictions_path')}: other test images than the rest of its run")
            run[side][row.name] = pred

    def stacked(preds: dict) -> np.ndarray:
        return next(iter(preds.values())) if len(preds) == 1 else np.stack(list(preds.values()))  # (draws, n)

    return [(r["labels"], stacked(r["a"]), stacked(r["b"])) for r in runs.values()]


def paired_versus(a: pd.DataFrame, b: pd.DataFrame) -> stats.Difference | None:
    """Accuracy of the rows ``a`` minus that of ``b``, paired on task, PETL and seed (and images), every
    pair combined (:func:`stats.combine_seeds`); collapsed rows and rows without predictions left out.
    None when no clean pair remains."""
    def clean(rows):
        return rows[~rows["collapsed"].fillna("").astype(bool)] if "collapsed" in rows else rows

    strata = _run_strata(_pairs(clean(a), clean(b)))
    return stats.combine_seeds(strata) if strata else None


def speedup_versus(a: pd.DataFrame, b: pd.DataFrame, batch: str) -> list[tuple[float, float, float]]:
    """Speed-up of each row of ``a`` over its pair in ``b`` at one batch size, from interleaved timings:
    (ratio, lo, hi) per pair that has them."""
    out = []
    for ra, rb in _pairs(a, b):
        ta, tb = _times(ra, batch), _times(rb, batch)
        if ta is not None and tb is not None and len(ta) == len(tb):
            out.append(stats.speedup_interval(tb, ta))
    return out


def describe_difference(d: stats.Difference | None, other: str) -> str:
    """A paired difference in words: ``2.1 points below the unpruned model (−3.0 to −1.2: a loss)``."""
    if d is None:
        return (f"not comparable image by image with {other}: no pair of runs with predictions where neither "
                "model collapsed")
    interval = f"95% interval {d.lo:+.1f} to {d.hi:+.1f} points over {d.seeds} paired run(s)"
    if d.call == "indistinguishable":
        return f"indistinguishable from {other} ({d.diff:+.1f} points, {interval})"
    side = "above" if d.diff > 0 else "below"
    return f"{abs(d.diff):.1f} points {side} {other} ({interval}: a {d.call})"


def _times(row: pd.Series, batch: str) -> np.ndarray | None:
    path = Path(str(row.get("predictions_path") or "")).with_name("efficiency.json")
    if not path.is_file():
        return None
    entry = (read_json(path).get("throughput") or {}).get(batch) or {}
    times = entry.get("times_s")
    return np.asarray(times, dtype=float) if times else None


def _task_estimate(strata) -> stats.Estimate:
    """One task's paired difference A − B (points) over its runs × images (:func:`stats.seed_image`)."""
    diffs = [100.0 * (stats._correct(pa, labels) - stats._correct(pb, labels)) for labels, pa, pb in strata]
    return stats.seed_image(diffs)


def _accuracy(part: Part, pairs, tasks) -> tuple[list[dict], float, float, float, str]:
    """Rows per task and over all tasks; (rows, direction, raw p, standard error, summary)."""
    rows, estimates = [], []
    for task in tasks:
        per_task = _run_strata([p for p in pairs if p[0]["task"] == task])
        if not per_task:
            continue
        e = _task_estimate(per_task)
        lo, hi = e.interval()
        estimates.append(e)
        rows.append({"task": task, "seeds": e.seeds, "value": e.value, "lo": lo, "hi": hi,
                     "call": stats.call(lo, hi), "p": e.p})
    if not estimates:
        return rows, np.nan, np.nan, np.nan, "no per-image predictions to pair" if pairs else "nothing to pair"
    e = stats.combine_tasks(estimates)
    lo, hi = e.interval()
    rows.append({"task": "all tasks", "seeds": e.seeds, "value": e.value, "lo": lo, "hi": hi,
                 "call": stats.call(lo, hi), "p": e.p, "se": e.se, "df": e.df})
    return rows, e.value, e.p, e.se, f"{e.value:+.1f} [{lo:+.1f}, {hi:+.1f}] points"


def _speed(part: Part, pairs, tasks) -> tuple[list[dict], float, float, float, str]:
    rows, logs, ps = [], [], []
    for ra, rb in pairs:
        batch = max((c.removeprefix("throughput_b") for c in ra.index if c.startswith("throughput_b")
                     and pd.notna(ra[c])), key=int, default=None)
        ta, tb = (_times(r, batch) for r in (ra, rb)) if batch else (None, None)
        if ta is None or tb is None or len(ta) != len(tb):
            rows.append({"task": ra["task"], "seeds": 1, "value": np.nan, "lo": np.nan, "hi": np.nan,
                         "call": "no interleaved timings"})
            continue
        ratio, lo, hi = stats.speedup_interval(tb, ta)
        call = stats.call(np.log(lo) if lo > 0 else -np.inf, np.log(hi) if hi > 0 else -np.inf)
        p = stats.speedup_p(tb, ta)
        rows.append({"task": ra["task"], "seeds": 1, "value": ratio, "lo": lo, "hi": hi, "call": call,
                     "batch": batch, "p": p})
        logs.append(np.log(ratio))
        ps.append(p)
    # every pair must go the same way (an intersection-union test: its p is the largest of theirs)
    same = bool(logs) and (all(v > 0 for v in logs) or all(v < 0 for v in logs))
    direction = float(np.mean(logs)) if logs else np.nan
    p = (max(ps) if same else 1.0) if ps and len(ps) == len(rows) else np.nan
    return rows, direction, p, np.nan, f"speed-up {_values(rows, '{:.2f}×')}"


def _storage(part: Part, pairs, tasks) -> tuple[list[dict], float, float, float, str]:
    """Exact counts: no sampling, so p is 0 where every pair goes the same way, 1 where not."""
    rows, signs = [], []
    for ra, rb in pairs:
        a, b = ra.get(part.metric, np.nan), rb.get(part.metric, np.nan)
        if pd.isna(a) or pd.isna(b):
            rows.append({"task": ra["task"], "seeds": 1, "value": np.nan, "lo": np.nan, "hi": np.nan,
                         "call": f"{part.convention}: not measured"})
            continue
        call = "win" if a < b else "loss" if a > b else "indistinguishable"
        rows.append({"task": ra["task"], "seeds": 1, "value": a / b, "lo": np.nan, "hi": np.nan, "call": call})
        signs.append(np.sign(b - a))  # fewer stored parameters is better
    measured = bool(signs) and len(signs) == len(rows)
    same = measured and (all(v > 0 for v in signs) or all(v < 0 for v in signs))
    direction = float(np.mean(signs)) if signs else np.nan
    p = (0.0 if same else 1.0) if measured else np.nan
    return rows, direction, p, np.nan, f"{part.convention}: A/B {_values(rows, '{:.2f}')}"


def _values(rows: list[dict], fmt: str) -> str:
    """The distinct measured values of a part's rows, e.g. ``1.52×/1.61×`` (``n/a`` if none)."""
    return "/".join(sorted({fmt.format(r["value"]) for r in rows if pd.notna(r["value"])})) or "n/a"


_MEASURE = {"accuracy": _accuracy, "speed": _speed, "storage": _storage}
_UNITS = {"accuracy": "A − B (points)", "speed": "speed-up of A over B (×)", "storage": "stored A / B"}


def _missing(arm: Arm, tiers: Mapping[str, Mapping]) -> str:
    """A missing arm and the tiers that run it (for one depth: those that run it at other depths)."""
    def names(have: list[str]) -> str:
        return ", ".join(have) + " tier" + ("s" if len(have) > 1 else "")

    have = [name for name, tier in tiers.items() if arm.in_tier(tier)]
    if have:
        return f"{arm.label} (run in the {names(have)})"
    if fixed_depth(arm.budget) is not None:
        elsewhere = [name for name, tier in tiers.items() if replace(arm, budget=FIXED_DEPTH).in_tier(tier)]
        if elsewhere:
            return f"{arm.label} (no tier runs it at {arm.budget}; the {names(elsewhere)} at other depths)"
    return f"{arm.label} (in no tier yet)"


def _at_fixed_depths(parts: tuple[Part, ...], df: pd.DataFrame, matched_alpha: str) -> list[Part]:
    """Each part between fixed-depth arms once per depth its A arm ran at (``SGLP (d6) vs last_k (d6)``):
    equal depth is a pairing, and each depth is a comparison of its own in the evidence and the verdict.
    A part whose A arm ran at no fixed depth stays as it is: missing, named."""
    out = []
    for part in parts:
        if part.a.budget != FIXED_DEPTH:
            out.append(part)
            continue
        depths = sorted(set(part.a.rows(df, matched_alpha)["budget"]), key=fixed_depth)
        out += [replace(part, a=part.a.at(d), b=part.b.at(d)) for d in depths] or [part]
    return out


def evaluate_claims(
    df: pd.DataFrame,
    matched_alpha: str,
    tiers: Mapping[str, Mapping] | None = None,
    pear: pd.DataFrame | None = None,
) -> list[ClaimResult]:
    """Judge every claim of :data:`CLAIMS` on the tidy table.

    Args:
        df: tidy table (``load_results`` / ``read_summary``), with ``predictions_path``.
        matched_alpha: the SLS alpha whose depth the ``matched`` budgets got.
        tiers: tier name → its config (``methods``, ``budgets``), to name where a missing arm runs.
        pear: Pear rows with their ``kc`` (``pear_section.pear_variants``); default: no kc known.
    """
    tiers = tiers or {}
    n_seeds = int(df["seed"].nunique()) if "seed" in df and len(df) else 0
    if pear is not None and not pear.empty:
        df = df.join(pear[["share", "kc"]], how="left") if "kc" not in df else df
    collapsed = df["collapsed"].fillna("").astype(bool) if "collapsed" in df else pd.Series(False, index=df.index)
    clean = df[~collapsed]
    dropped = [f"{r.task}/{r.petl}/seed{r.seed} {r.key}-{r.budget}" for r in df[collapsed].itertuples()]
    results = []
    for claim in CLAIMS:
        parts = _at_fixed_depths(claim.parts, df, matched_alpha)
        # a part still at FIXED_DEPTH: its A arm ran at no fixed depth, and naming every B too is noise
        missing = [arm for part in parts for arm in ((part.a,) if part.a.budget == FIXED_DEPTH else (part.a, part.b))
                   if arm.rows(df, matched_alpha).empty]
        present = [p for p in parts if p.a not in missing and p.b not in missing]
        if missing and (not present or not claim.partial):
            names = "; ".join(dict.fromkeys(_missing(a, tiers) for a in missing))
            results.append(ClaimResult(claim, NOT_RUN, f"missing arm: {names}"))
            continue
        evidence, measured = [], []
        for part in present:
            pairs = _pairs(part.a.rows(clean, matched_alpha), part.b.rows(clean, matched_alpha))
            n_all = len(_pairs(part.a.rows(df, matched_alpha), part.b.rows(df, matched_alpha)))
            tasks = sorted({ra["task"] for ra, _ in pairs})
            rows, direction, p, se, summary = _MEASURE[part.kind](part, pairs, tasks)
            if len(pairs) < n_all:
                summary += f"; {n_all - len(pairs)} of {n_all} pair(s) left out as collapsed"
            name = f"{part.a.label} vs {part.b.label}"
            evidence += [{"comparison": name, "measure": _UNITS[part.kind], **r} for r in rows]
            measured.append((part, name, direction if pairs else np.nan, p if pairs else np.nan, se, summary,
                             bool(pairs)))
        calls, adjusted = stats.family_calls([m[2] if not np.isnan(m[2]) else 0.0 for m in measured],
                                             [m[3] for m in measured], ALPHA)
        family = max(1, int(np.sum(~np.isnan([m[3] for m in measured]))))
        table, reasons = [], []
        for (part, name, _direction, p, se, summary, any_pair), call, adj in zip(measured, calls, adjusted,
                                                                             strict=True):
            # the smallest difference detected with 80% power at Holm's strictest step (alpha / parts)
            mde = (stats.Estimate(0.0, se, _df(evidence, name), 1, 0).mde(alpha=ALPHA / family)
                   if part.kind == "accuracy" and np.isfinite(se) else np.nan)
            table.append({"comparison": name, "kind": part.kind, "p_raw": p, "p_holm": adj, "call": call,
                          "mde_points": mde})
            what = call if any_pair else "no clean pair"
            text = f"{part.kind} vs {part.b.label}: {what} ({summary}; p {_p(p)} raw, {_p(adj)} Holm"
            if np.isfinite(mde):
                text += f"; a difference of {mde:.1f} points or more would probably have been seen"
            reasons.append(text + ")")
        if missing:
            reasons.append("not run: " + "; ".join(dict.fromkeys(_missing(a, tiers) for a in missing)))
        verdict = (CONTRADICTED if "loss" in calls else SUPPORTED if calls and all(c == "win" for c in calls)
                   else INCONCLUSIVE)
        results.append(ClaimResult(claim, verdict, "; ".join(reasons), pd.DataFrame(evidence),
                                   [d for d in dropped], pd.DataFrame(table), n_seeds))
    return results


def verdict_line(result: ClaimResult) -> str:
    """``SLS-1 — supported: ...`` (one line for the intro page), with the one-seed caveat where it applies."""
    caveat = f" ({result.caveat})" if result.caveat else ""
    return f"{result.claim.id} — {result.verdict}{caveat}: {result.claim.text}"


def _p(p: float) -> str:
    return "n/a" if p is None or np.isnan(p) else f"{p:.3g}" if p >= 1e-3 else "<0.001"


def _df(evidence: list[dict], name: str) -> float:
    """The Satterthwaite degrees of freedom of a part's all-tasks row (its MDE's t quantiles)."""
    rows = [r for r in evidence if r["comparison"] == name and r.get("task") == "all tasks" and "df" in r]
    return float(rows[-1]["df"]) if rows else np.inf


def claim_figure(result: ClaimResult):
    """Each comparison's per-task value with its interval, against the no-difference line: one panel per
    measure (points, ×, ratio), each on its own axis with its own line (0 for differences, 1 for ratios)."""
    from matplotlib.figure import Figure

    ev = result.evidence
    if ev.empty or ev["value"].isna().all():
        return None
    ev = ev[ev["value"].notna()].reset_index(drop=True)
    kinds = list(dict.fromkeys(ev["measure"]))  # in the claim's order
    sizes = [int((ev["measure"] == k).sum()) for k in kinds]
    fig = Figure(figsize=(7.5, 0.45 * len(ev) + 1.2 * len(kinds) + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(kinds), 1, height_ratios=sizes, squeeze=False)[:, 0])
    for ax, kind in zip(axes, kinds, strict=True):
        part = ev[ev["measure"] == kind]
        y = np.arange(len(part))[::-1]
        err = np.array([part["value"] - part["lo"].fillna(part["value"]),
                        part["hi"].fillna(part["value"]) - part["value"]])
        for i, call in enumerate(part["call"]):
            color = "tab:green" if call == "win" else "tab:red" if call == "loss" else "tab:gray"
            ax.errorbar(part["value"].iloc[i], y[i], xerr=err[:, i:i + 1], fmt="o", color=color, capsize=3)
        ax.axvline(0.0 if kind == _UNITS["accuracy"] else 1.0, color="black", lw=0.8, ls="--")
        ax.set_yticks(y, [f"{c.split(' vs ')[1]} · {t}" for c, t in zip(part["comparison"], part["task"],
                                                                         strict=True)], fontsize=10)
        ax.set_xlabel(kind, fontsize=11)
        ax.tick_params(labelsize=10)
    axes[0].set_title(f"{result.claim.id}: {result.verdict}", fontsize=12)
    return fig
