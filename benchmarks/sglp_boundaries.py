"""How often SGLP's official boundary recovery misses the optimal cuts (issue 29; book/methods/sglp.md).

For each SGLP score file (the CKA column sums of a run and the k it chose) and for random sequences,
the official back-tracking (``analysis.segment.official_segments``, Network_Partition.py line 98) is
compared with the exact optimum (``fisher_segments``) at the k SGLP chose: a miss is a total
within-segment sum of squares above the optimum's (or fewer segments than asked). The excess is given
as a share of the sequence's total sum of squares, P(N, 1).

    python benchmarks/sglp_boundaries.py --scores '/work/baseline/results/runs/*/adapter/seed*/score/sglp.json'

Pure numpy, a few seconds; prints Markdown (and ``--json`` writes the rows).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

from petlprune.analysis.segment import choose_k, fisher_segments, official_segments, segments_loss


def compare(values: list[float], k: int) -> dict:
    """Exact and official cuts of ``values`` into ``k`` segments, their losses and the excess."""
    exact, official = fisher_segments(values, k), official_segments(values, k)
    e, o = segments_loss(values, exact), segments_loss(values, official)
    total = segments_loss(values, [(0, len(values))])
    miss = o > e + 1e-12 * max(total, 1e-300) or len(official) != len(exact)
    return {"k": k, "exact": exact, "official": official, "loss_exact": e, "loss_official": o,
            "excess": (o - e) / total if total > 0 else 0.0, "miss": bool(miss)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", nargs="*", default=[], help="glob(s) of SGLP score files (sglp*.json)")
    parser.add_argument("--random", type=int, default=400, help="random sequences (random walks, N = 12)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for pattern in args.scores:
        for path in sorted(glob.glob(pattern)):
            data = json.loads(Path(path).read_text())
            extra = data["extra"]
            row = compare(data["scores"], int(extra["k"]))
            row.update(source=path, tokens=extra.get("options", {}).get("tokens", "cls"))
            rows.append(row)
    print("| score file | tokens | k | exact cuts | official cuts | excess (share of total SS) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cuts = lambda segs: " ".join(f"[{a},{b})" for a, b in segs)  # noqa: E731
        print(f"| {r['source']} | {r['tokens']} | {r['k']} | {cuts(r['exact'])} | {cuts(r['official'])} | "
              f"{100 * r['excess']:.1f}% |")
    if rows:
        print(f"\nreal CKA sums: official cuts sub-optimal on {sum(r['miss'] for r in rows)} of {len(rows)}")
    rng = np.random.default_rng(0)
    random_rows = []
    for _ in range(args.random):
        v = rng.normal(size=12).cumsum()
        random_rows.append(compare(v.tolist(), choose_k(v)))
    if random_rows:
        excess = np.array([r["excess"] for r in random_rows if r["miss"]])
        ks = np.bincount([r["k"] for r in random_rows], minlength=7)
        print(f"random walks (N = 12, k by SGLP's rule; k counts {dict(enumerate(ks.tolist()))}): "
              f"sub-optimal on {len(excess)} of {len(random_rows)}; excess median "
              f"{100 * np.median(excess) if len(excess) else 0:.1f}%, max {100 * excess.max() if len(excess) else 0:.1f}%")
    if args.json:
        args.json.write_text(json.dumps({"scores": rows, "random": random_rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
