"""Method-specific sections of a result notebook: what the method measured and what it decided.

:data:`SECTIONS` maps a method name to a function ``(run, method) -> [(title, Figure), ...]``.
Adding a method's section is one function and one line in that dict; a method without an entry
gets :func:`block_score_section` (its per-unit score curve and the blocks each plan kept).
Blocks are numbered from 1 in every figure (block L is the L-th block), as in the SLS paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from petlprune.report.load import ResultsError, RunDir, split_key
from petlprune.report.pear_section import pear_section
from petlprune.report.sglp_section import sglp_section
from petlprune.report.spa_section import spa_section
from petlprune.report.style import FIG_WIDTH, styled
from petlprune.report.tables import budget_order, method_label

__all__ = [
    "Section",
    "SECTIONS",
    "method_section",
    "block_score_section",
    "sls_section",
    "kept_blocks_figure",
    "score_curve_figure",
    "sls_tsne_grid",
    "sls_silhouette_figure",
    "sls_alpha",
]

_KEPT = "#3b6ea8"  # a kept block, in every block figure

Section = Callable[[RunDir, str], list[tuple[str, Figure]]]


def _num_blocks(run: RunDir) -> int | None:
    """Depth of the unpruned model, from the finetune metrics (None if not there)."""
    from petlprune.io import read_json

    path = run.root / "finetune" / "metrics.json"
    return int(read_json(path)["depth"]) if path.is_file() else None


@styled
def kept_blocks_figure(run: RunDir, method: str) -> Figure | None:
    """Kept (dark) and removed (light) blocks of every Plan of ``method``: one row per key × budget."""
    plans = run.plans(method)
    if not plans:
        return None
    plans = dict(sorted(plans.items(), key=lambda kv: (kv[0][0], budget_order(kv[0][1]))))
    n = _num_blocks(run) or 1 + max(max(p["kept_blocks"], default=0) for p in plans.values())
    grid = np.zeros((len(plans), n))
    for r, plan in enumerate(plans.values()):
        grid[r, plan["kept_blocks"]] = 1.0
    fig = Figure(figsize=(min(FIG_WIDTH, 0.4 * n + 3.2), 0.4 * len(plans) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(grid, cmap=ListedColormap(["#eeeeee", _KEPT]), vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n), [str(i + 1) for i in range(n)])
    ax.set_yticks(range(len(plans)), [f"{k} · {b} (depth {p['depth']})" for (k, b), p in plans.items()])
    ax.set_xlabel("block")
    ax.set_title(f"{method_label(method)}: blocks kept (dark)")
    return fig


@styled
def score_curve_figure(run: RunDir, method: str) -> Figure | None:
    """Per-unit scores of every key of ``method`` (all random draws on one axes)."""
    scored = [(k, s) for k in run.keys(method) if (s := run.scores(k)) is not None]
    if not scored:
        return None
    fig = Figure(figsize=(0.75 * FIG_WIDTH, 3.4), layout="constrained")
    ax = fig.subplots()
    for key, scores in scored:
        values = scores["scores"]
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", ms=3, label=key)
    ax.set_xlabel("block / unit")
    ax.set_ylabel("score")
    ax.set_title(f"{method_label(method)}: scores (the plan keeps the highest)")
    ax.grid(alpha=0.3)
    if len(scored) > 1:
        ax.legend()
    return fig


def block_score_section(run: RunDir, method: str) -> list[tuple[str, Figure]]:
    """Default section: score curve(s) and kept blocks."""
    out = []
    if (fig := score_curve_figure(run, method)) is not None:
        out.append(("Scores", fig))
    if (fig := kept_blocks_figure(run, method)) is not None:
        out.append(("Blocks kept by each plan", fig))
    return out


def sls_alpha(budget: str) -> float | None:
    """The alpha of an SLS budget ``a0.3`` (None for other budgets)."""
    if budget.startswith("a"):
        try:
            return float(budget[1:])
        except ValueError:
            return None
    return None


def _embedded(embeddings: np.ndarray, blocks: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalise the sidecar to (E, n, 2) maps and their 0-based block indices.

    Accepts ``embedded_blocks`` as indices or as a boolean mask over all blocks, and ``embeddings``
    either for the embedded blocks only (E, n, 2) or for every block (N, n, 2, NaN where skipped).
    """
    blocks = np.asarray(blocks)
    if blocks.dtype == bool:
        blocks = np.flatnonzero(blocks)
    blocks = blocks.astype(int)
    if embeddings.ndim != 3 or embeddings.shape[2] != 2:
        raise ResultsError(f"{where}: 'embeddings' must be (blocks, n, 2), got {embeddings.shape}")
    if embeddings.shape[0] != len(blocks):
        if len(blocks) and blocks.max() < embeddings.shape[0]:
            embeddings = embeddings[blocks]  # stored for every block: keep the embedded ones
        else:
            raise ResultsError(f"{where}: {embeddings.shape[0]} embeddings for embedded blocks {blocks.tolist()}")
    return embeddings, blocks


@styled
def sls_tsne_grid(
    embeddings: np.ndarray, blocks: np.ndarray, labels: np.ndarray, scores: np.ndarray, depth: int | None
) -> Figure:
    """One 2-D t-SNE map per embedded block, coloured by class: kept blocks framed in blue, removed
    blocks faded with a grey frame.

    Four maps a row across the page's width (each about 210 px on a 1280-px window), so a title
    ``block 3 · kept`` and its silhouette stay readable (six 110-px thumbnails a row did not).

    Args:
        embeddings: (E, n, 2) embeddings of the E embedded blocks.
        blocks: (E,) 0-based block index of each embedding.
        labels: (n,) class labels.
        scores: (N,) silhouette per block (NaN where not computed).
        depth: blocks kept by the plan (None if no plan).
    """
    embeddings, blocks = _embedded(embeddings, blocks, "SLS sidecar")
    if embeddings.shape[1] != len(labels):
        raise ResultsError(f"SLS sidecar: {embeddings.shape[1]} embedded points but {len(labels)} labels")
    order = np.argsort(blocks)
    ncols = min(4, len(blocks))
    nrows = -(-len(blocks) // ncols)
    fig = Figure(figsize=(FIG_WIDTH if ncols == 4 else FIG_WIDTH * ncols / 4, 2.3 * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    cmap = colormaps["tab10" if labels.max() < 10 else "tab20"]
    for ax, e in zip(axes, order, strict=False):
        b = int(blocks[e])
        emb = embeddings[e]
        removed = depth is not None and b >= depth
        ax.scatter(emb[:, 0], emb[:, 1], c=labels % cmap.N, cmap=cmap, vmin=0, vmax=cmap.N - 1, s=4,
                   linewidths=0, alpha=0.3 if removed else 1.0)
        sc = scores[b] if b < len(scores) else math.nan
        state = "" if depth is None else (" · removed" if removed else " · kept")
        ax.set_title(f"block {b + 1}{state}\nSC {sc:.2f}", color="0.5" if removed else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("0.75" if removed else _KEPT if depth is not None else "0.3")
            spine.set_linewidth(1.0 if removed else 2.5)
    for ax in axes[len(blocks):]:
        ax.set_visible(False)
    if depth is not None:
        fig.suptitle(f"the plan keeps blocks 1–{depth} (blue frames); faded: removed")
    return fig


@styled
def sls_silhouette_figure(scores: dict, plans: dict, extra_curves: dict[str, np.ndarray]) -> Figure:
    """Silhouette per block with each alpha's threshold alpha·SC_N and the depth it chose.

    Args:
        scores: ``RunDir.scores("sls")``.
        plans: {(key, budget): plan dict} of SLS (``RunDir.plans``).
        extra_curves: other per-block criteria the scorer saved (ablations), drawn in extra panels.
    """
    values = scores["scores"]
    n = len(values)
    x = np.arange(1, n + 1)
    # the silhouette panel on its own row, at most two extra panels a row under it
    ncols = 2 if extra_curves else 1
    fig = Figure(figsize=(FIG_WIDTH, 3.6 * (1 + -(-len(extra_curves) // 2))),
                 layout="constrained")
    grid = fig.add_gridspec(1 + -(-len(extra_curves) // 2), ncols)
    axes = [fig.add_subplot(grid[0, :])] + [fig.add_subplot(grid[1 + i // 2, i % 2]) for i in range(len(extra_curves))]
    ax = axes[0]
    ax.plot(x, values, marker="o", ms=5, color="0.2", label="silhouette of the t-SNE map")
    for i, ((_, budget), plan) in enumerate(sorted(plans.items(), key=lambda kv: budget_order(kv[0][1]))):
        alpha = sls_alpha(budget)
        color = f"C{i + 1}"
        if alpha is not None and not math.isnan(values[-1]):
            ax.axhline(alpha * values[-1], color=color, ls="--", lw=1,
                       label=f"threshold {alpha:g}·SC$_N$ = {alpha * values[-1]:.3f}")
        ax.axvline(plan["depth"] + 0.5, color=color, ls=":", lw=1.5, label=f"{budget}: keep {plan['depth']} blocks")
    ax.set_xlabel("block")
    ax.set_ylabel("silhouette coefficient")
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    for ax, (name, curve) in zip(axes[1:], extra_curves.items(), strict=True):
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3, color="0.3")
        ax.set_title(name)
        ax.set_xlabel("block")
        ax.grid(alpha=0.3)
    return fig


def _per_block_extras(extra: dict, n: int) -> dict[str, np.ndarray]:
    """Numeric per-block lists the scorer put in ``extra`` (e.g. raw-feature silhouette, CH, DB)."""
    out = {}
    for name, value in extra.items():
        if isinstance(value, list) and len(value) == n and all(v is None or isinstance(v, int | float) for v in value):
            out[name] = np.array([math.nan if v is None else float(v) for v in value])
    return out


def sls_section(run: RunDir, method: str) -> list[tuple[str, Figure]]:
    """SLS: the t-SNE map of every embedded block, and the silhouette curve with the threshold."""
    out: list[tuple[str, Figure]] = []
    for key, scores, key_plans in run.scored(method):
        # the maps grey out what the smallest alpha removed (the others remove no more)
        depth = next((p["depth"] for (_, b), p in key_plans.items() if sls_alpha(b) is not None), None)
        sidecar = run.sidecar(key)
        if sidecar is not None:
            for name in ("embeddings", "embedded_blocks"):
                if name not in sidecar:
                    raise ResultsError(f"{run.root / 'score' / (key + '.npz')}: missing array {name!r}")
            labels = sidecar.get("labels")
            labels = run.labels() if labels is None else labels
            if labels is None:
                raise ResultsError(f"{run.root}: no labels for the t-SNE maps (features.npz or the sidecar)")
            out.append((f"t-SNE map of each block ({key})", sls_tsne_grid(
                sidecar["embeddings"], sidecar["embedded_blocks"], np.asarray(labels), scores["scores"], depth)))
        extras = _per_block_extras(scores["extra"], len(scores["scores"]))
        out.append((f"Silhouette per block and the threshold ({key})",
                    sls_silhouette_figure(scores, key_plans, extras)))
    if (fig := kept_blocks_figure(run, method)) is not None:
        out.append(("Blocks kept by each plan", fig))
    return out


# registered method → its section (an instance of a method is drawn by the method's section); a new
# method adds one line here, its drawing code in its own module.
SECTIONS: dict[str, Section] = {
    "sls": sls_section,
    "pear": pear_section,
    "adapter_drop": pear_section,
    "sglp": sglp_section,
    "spa": spa_section,
    "fine_pruning": spa_section,
}


def method_section(run: RunDir, method: str) -> list[tuple[str, Figure]]:
    """The figures of ``method``'s section for one run (its own drawing function, or the default)."""
    base = split_key(method)[0]
    section = SECTIONS.get(base)
    if section is None:  # an instance (sglp_k3: {method: sglp}) draws like the method it runs
        registered = next((s["method"] for k in run.keys(base) if (s := run.scores(k)) is not None), None)
        section = SECTIONS.get(registered, block_score_section)
    return section(run, base)
