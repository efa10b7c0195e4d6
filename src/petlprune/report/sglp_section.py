"""SGLP's section of a result notebook: the CKA matrix with the segments, P(N, k), kept blocks per segment.

Everything is read from the scores file (``extra``: ``cka``, ``segments``, ``losses``, ``k``) and the
plans (``extra``: ``keep_per_segment``); nothing is recomputed. Blocks are numbered from 1.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from petlprune.report.load import ResultsError, RunDir
from petlprune.report.style import FIG_WIDTH, styled

__all__ = ["sglp_section", "cka_segments_figure", "segmentation_loss_figure", "segment_keep_figure"]


def _require(extra: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in extra]
    if missing:
        raise ResultsError(f"{where}: SGLP scores lack {missing} (written by an older version? re-run score)")


@styled
def cka_segments_figure(cka: np.ndarray, segments: list[list[int]], title: str = "") -> Figure:
    """Linear CKA between every pair of blocks, with the Fisher segments outlined.

    Args:
        cka: (N, N) CKA matrix, blocks in forward order.
        segments: half-open [start, end) block ranges (0-based), in order.
        title: axes title.
    """
    n = cka.shape[0]
    fig = Figure(figsize=(0.7 * FIG_WIDTH, 4.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(cka, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper")
    for a, b in segments:  # a square per segment on the diagonal; cells are centred on integers
        ax.add_patch(_square(a - 0.5, b - a))
    ax.set_xticks(range(n), [str(i + 1) for i in range(n)])
    ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
    ax.set_xlabel("block")
    ax.set_ylabel("block")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="linear CKA")
    return fig


def _square(origin: float, size: int):
    from matplotlib.patches import Rectangle

    return Rectangle((origin, origin), size, size, fill=False, edgecolor="white", lw=2.0)


@styled
def segmentation_loss_figure(losses: list[float], k: int, auto: bool) -> Figure:
    """The Fisher loss P(N, k) for k = 1..K_max and the chosen K."""
    ks = np.arange(1, len(losses) + 1)
    fig = Figure(figsize=(0.7 * FIG_WIDTH, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(ks, losses, marker="o", ms=4, color="C0")
    ax.axvline(k, color="C3", ls="--", lw=1.2, label=f"K = {k} ({'auto rule' if auto else 'fixed'})")
    ax.set_xlabel("number of segments k")
    ax.set_ylabel("P(N, k): within-segment sum of squares")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


@styled
def segment_keep_figure(n: int, segments: list[list[int]], plans: dict[tuple[str, str], dict]) -> Figure:
    """One row per plan: kept blocks (dark), segments as alternating bands, with ``kept/length`` per segment."""
    rows = list(plans.items())
    fig = Figure(figsize=(min(FIG_WIDTH, 0.4 * n + 3.2), 0.42 * len(rows) + 1.1), layout="constrained")
    ax = fig.subplots()
    grid = np.zeros((len(rows), n))
    for r, (_, plan) in enumerate(rows):
        for s, (a, b) in enumerate(segments):
            grid[r, a:b] = 0.5 * (s % 2)  # light bands tell the segments apart
        grid[r, plan["kept_blocks"]] = 2.0
    ax.imshow(grid, cmap=ListedColormap(["#f2f2f2", "#dcdcdc", "#3b6ea8"]), vmin=0, vmax=2, aspect="auto")
    for r, (_, plan) in enumerate(rows):
        counts = plan.get("extra", {}).get("keep_per_segment")
        for s, (a, b) in enumerate(segments):
            kept = counts[s] if counts else sum(a <= i < b for i in plan["kept_blocks"])
            ax.text((a + b - 1) / 2, r, f"{kept}/{b - a}", ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    for a, _ in segments[1:]:
        ax.axvline(a - 0.5, color="black", lw=1.0)
    ax.set_xticks(range(n), [str(i + 1) for i in range(n)])
    ax.set_yticks(range(len(rows)), [f"{k} · {b} (depth {p['depth']})" for (k, b), p in rows])
    ax.set_xlabel("block (segments separated by lines; kept / segment length)")
    ax.set_title("SGLP: blocks kept in each segment (dark)")
    return fig


def sglp_section(run: RunDir, method: str) -> list[tuple[str, Figure]]:
    """SGLP: CKA heatmap with the segment boundaries, P(N, k) with the chosen K, kept blocks per segment."""
    out: list[tuple[str, Figure]] = []
    for key, scores, key_plans in run.scored(method):
        extra = scores["extra"]
        where = str(run.root / "score" / f"{key}.json")
        _require(extra, ("cka", "segments", "losses", "k"), where)
        cka = np.asarray(extra["cka"], dtype=float)
        if cka.ndim != 2 or cka.shape[0] != cka.shape[1]:
            raise ResultsError(f"{where}: 'cka' must be a square matrix, got shape {cka.shape}")
        segments = [list(s) for s in extra["segments"]]
        tokens = extra.get("options", {}).get("tokens", "cls")
        out.append((f"Linear CKA between blocks, with the {len(segments)} segments ({key})",
                    cka_segments_figure(cka, segments, f"{key}: CKA of block outputs ({tokens} tokens)")))
        out.append((f"Segmentation loss and the chosen K ({key})",
                    segmentation_loss_figure(extra["losses"], int(extra["k"]), bool(extra.get("k_auto")))))
        if key_plans:
            out.append((f"Blocks kept per segment ({key})", segment_keep_figure(cka.shape[0], segments, key_plans)))
    return out
