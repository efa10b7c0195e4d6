"""SLS's t-SNE with openTSNE (what the study runs) vs scikit-learn (what the official code runs).

For each task of the results tree, SLS's walk (``methods.sls.walk_depth``: from the last block down,
stopping at the first block below alpha x SC_N) is run twice on the stored block features
(``features.npz``): once with ``analysis.tsne.tsne_embed`` (openTSNE, sklearn-matched settings) and
once with ``sklearn.manifold.TSNE(n_components=2, init="pca", perplexity=p, random_state=seed)``,
both min-max normalised and scored by the silhouette. Printed: the t-SNE seconds of each walk, the
depth each chose (and the depth the study's plan recorded), and the largest silhouette difference over
the blocks both walks scored.

    python benchmarks/tsne_backends.py --results /tmp/timed/results [--tasks digits textures | --max-tasks 0]

By default only the first two tasks (by name) are compared: sklearn's t-SNE is the slow side.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _suite import Timer, add_common_arguments, format_table, write_result  # noqa: E402

__all__ = ["sklearn_embed", "walk_with", "main"]


def sklearn_embed(x: np.ndarray, *, perplexity: float = 30.0, seed: int = 0, n_jobs: int = 1) -> np.ndarray:
    """The official SLS call: sklearn's TSNE with PCA init, then each axis min-max normalised."""
    from sklearn.manifold import TSNE

    from petlprune.analysis.tsne import minmax_normalise

    y = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed, n_jobs=n_jobs).fit_transform(
        np.asarray(x, dtype=np.float64))
    return minmax_normalise(y)


def walk_with(embed: Callable[[np.ndarray], np.ndarray], cls: np.ndarray, labels: np.ndarray,
              alpha: float) -> dict[str, Any]:
    """SLS's lazy walk with one t-SNE backend: ``{"depth", "scores" {block: silhouette}, "seconds"}``
    (seconds of embedding and scoring only)."""
    from petlprune.analysis.cluster import silhouette
    from petlprune.methods.sls import walk_depth

    scores: dict[int, float] = {}
    seconds = 0.0

    def score_of(i: int) -> float:
        nonlocal seconds
        with Timer() as t:
            scores[i] = silhouette(embed(cls[i]), labels)
        seconds += t.seconds
        return scores[i]

    decision = walk_depth(score_of, cls.shape[0], alpha)
    return {"depth": decision.depth, "scores": scores, "seconds": seconds}


def _sls_settings(run: Path) -> tuple[float, float, int | None]:
    """(alpha, perplexity, recorded depth) from the run's SLS score and plan files (defaults if absent)."""
    from petlprune.io import read_json

    alpha, perplexity, depth = 0.3, 30.0, None
    score = run / "score" / "sls.json"
    if score.is_file():
        extra = read_json(score).get("extra", {})
        perplexity = float(extra.get("perplexity", perplexity))
        alpha = float(extra.get("decision", {}).get("alpha", alpha))
        depth = extra.get("decision", {}).get("depth")
    return alpha, perplexity, depth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks (default: runs with features.npz, see --max-tasks)")
    # sklearn's t-SNE costs ~10 s per block on 2 cores: two tasks keep the default run within minutes.
    parser.add_argument("--max-tasks", type=int, default=2,
                        help="without --tasks, the first N tasks by name (0: all; default 2)")
    parser.add_argument("--petl", default="adapter")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # recorded with the result; the t-SNE libraries get n_jobs=threads
    load = os.getloadavg()[0]

    from petlprune.analysis.tsne import tsne_embed

    runs = sorted((args.results / "runs").glob(f"*/{args.petl}/seed{args.seed}/features.npz"))
    runs = [p.parent for p in runs if args.tasks is None or p.parents[2].name in args.tasks]
    if args.tasks is None and args.max_tasks > 0:
        runs = runs[: args.max_tasks]
    if not runs:
        print(f"{args.results}/runs: no features.npz for petl {args.petl}, seed {args.seed}", file=sys.stderr)
        return 1
    rows = []
    for run in runs:
        task = run.parents[1].name
        with np.load(run / "features.npz") as data:
            cls, labels = data["cls"], data["labels"]
        alpha, perplexity, recorded = _sls_settings(run)
        kw = dict(perplexity=perplexity, seed=args.seed, n_jobs=args.threads)
        ours = walk_with(functools.partial(tsne_embed, **kw), cls, labels, alpha)
        ref = walk_with(functools.partial(sklearn_embed, **kw), cls, labels, alpha)
        common = sorted(set(ours["scores"]) & set(ref["scores"]))
        rows.append({
            "task": task, "n": int(cls.shape[1]), "alpha": alpha,
            "blocks_embedded_opentsne": len(ours["scores"]), "blocks_embedded_sklearn": len(ref["scores"]),
            "seconds_opentsne": ours["seconds"], "seconds_sklearn": ref["seconds"],
            "speedup": ref["seconds"] / ours["seconds"],
            "depth_opentsne": ours["depth"], "depth_sklearn": ref["depth"], "depth_recorded": recorded,
            "same_depth": ours["depth"] == ref["depth"],
            "max_silhouette_diff": max(abs(ours["scores"][i] - ref["scores"][i]) for i in common),
        })
        print(format_table(rows[-1:]), flush=True)
    print()
    print(format_table(rows, ["task", "seconds_opentsne", "seconds_sklearn", "speedup", "depth_opentsne",
                              "depth_sklearn", "depth_recorded", "max_silhouette_diff"]))
    per_block = [(r["seconds_sklearn"] / r["blocks_embedded_sklearn"]) / (r["seconds_opentsne"] / r["blocks_embedded_opentsne"])
                 for r in rows]
    same = sum(r["same_depth"] for r in rows)
    print(f"same SLS depth on {same}/{len(rows)} tasks; sklearn / openTSNE seconds per block: "
          f"median {float(np.median(per_block)):.2f}x; threads {args.threads}; load before {load:.2f}")
    write_result(args, "tsne_backends", {"rows": rows, "same_depth": same, "tasks": len(rows),
                                         "median_speedup_per_block": float(np.median(per_block))}, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
