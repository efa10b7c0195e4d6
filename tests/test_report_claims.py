"""Claims, matched tables, per-PETL ranks and collapsed runs on a fabricated tree with known answers.

The tree: 2 tasks × 2 PETLs (adapter, convpass) × 2 seeds; SLS at two alphas (a0.3, the matched one,
and a0.5); DepGraph, block influence, SGLP and last-k at ``matched``; at the fixed depth ``d6`` (as the
default tier) SGLP, last-k, one random draw, block influence and Taylor. Every model's per-image
predictions are fabricated so that the paired differences are known exactly: a model of accuracy q
is right on the first q·n images of one fixed order of the run's test images (so models nest),
except block influence, right on as many images as it would be but 40 of them swapped for others.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from petlprune import report
from petlprune.report.claims import evaluate_claims, reference_rows
from petlprune.report.tables import matched_rows, rank_table

N, CLASSES = 400, 4  # test images per run; balanced classes: chance is 25%
TOP1 = {"finetune": 0.85, "sls-a0.3": 0.80, "sls-a0.5": 0.90, "depgraph-matched": 0.70,
        "block_influence-matched": 0.80, "sglp-matched": 0.60, "last_k-matched": 0.80,
        # d6: SGLP 5 points above last-k, block influence and Taylor, 10 above the random draw
        "sglp-d6": 0.75, "last_k-d6": 0.70, "random.0-d6": 0.65, "block_influence-d6": 0.70,
        "taylor_layer-d6": 0.70}
DEPTH = {"finetune": 12, "sls-a0.3": 6, "sls-a0.5": 9}
SECONDS = {"finetune": 0.004, "sls-a0.3": 0.001, "sls-a0.5": 0.002}  # per batch; the others 0.002
COLLAPSED_RUN = ("beta", "convpass", 1)  # its fine-tune is right on 20% of the images: below chance


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _result(out: Path, task, petl, seed, name, order, labels, rng):
    q = TOP1[name] if (task, petl, seed) != COLLAPSED_RUN or name != "finetune" else 0.20
    right = np.zeros(N, bool)
    if name.startswith("block_influence"):
        right[order[40:40 + round(q * N)]] = True  # as many right as its q says, 40 others swapped in
    else:
        right[order[: round(q * N)]] = True
    pred = np.where(right, labels, (labels + 1) % CLASSES)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "predictions.npz", labels=labels, pred=pred, split=np.array("test"))
    depth = DEPTH.get(name, 6)
    method, _, budget = name.partition("-")
    _write(out / "metrics.json", {"task": task, "petl": petl, "seed": seed, "top1": float(right.mean()),
                                  "n_eval": N, "depth": depth, "eval_split": "test", "method": method,
                                  "budget": budget or None})
    seconds = SECONDS.get(name, 0.002) * (1 + 0.01 * rng.standard_normal(20))
    stored = {"finetune": 20_000, "depgraph-matched": 40_000}.get(name, 10_000)
    _write(out / "efficiency.json", {
        # as measure writes it: only a method that reshapes the backbone has a "stored as a model" figure
        "params_forward": 1000 * depth, "params_stored": stored,
        "params_stored_as_model": stored * 10 if name.startswith("depgraph") else None,
        "flops_per_image": 1e6 * depth, "device": "cpu", "threads": 1,
        "throughput": {"8": {"images_per_s": 8 / float(np.median(seconds)), "latency_ms": 1e3 * float(np.median(seconds)),
                             "times_s": seconds.tolist()}}})


def fabricate(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for task in ("alpha", "beta"):
        for petl in ("adapter", "convpass"):
            for seed in (0, 1):
                run = root / "runs" / task / petl / f"seed{seed}"
                labels = np.arange(N) % CLASSES
                order = np.random.default_rng(zlib.crc32(f"{task}/{petl}/{seed}".encode())).permutation(N)  # not hash(): salted per process
                for name in TOP1:
                    out = run / ("finetune" if name == "finetune" else f"pruned/{name}")
                    _result(out, task, petl, seed, name, order, labels, rng)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return fabricate(tmp_path_factory.mktemp("claims"))


@pytest.fixture(scope="module")
def df(tree):
    return report.load_results(tree)


TIERS = {"default": {"methods": {"sls": {}, "depgraph": {}}, "budgets": {"sls": ["a0.3"], "depgraph": ["matched"]}},
         "full": {"methods": {"pear": {"kc": "none"}, "adapter_drop": {}, "spa": {"petl": "splora"},
                              "fine_pruning": {"petl": "splora"}, "angular": {}},
                  "budgets": {"pear": ["r0.5"], "adapter_drop": ["r0.5"], "spa": ["p0.5"], "fine_pruning": ["p0.5"],
                              "angular": ["matched", "d4", "d8"]}}}


def _by_id(df):
    return {r.claim.id: r for r in evaluate_claims(df, "a0.3", TIERS)}


def test_collapsed_run_is_marked_with_what_was_pruned_from_it(df):
    ft = df[(df.task == "beta") & (df.petl == "convpass") & (df.seed == 1)]
    assert (ft.chance == 25.0).all()
    assert ft.loc[ft.method == "finetune", "collapsed"].item() == "collapsed"
    assert set(ft.loc[ft.method != "finetune", "collapsed"]) == {"from fine-tune"}
    assert (df.loc[~df.index.isin(ft.index), "collapsed"] == "").all()
    agg = report.aggregate(df[(df.seed == 1)])
    table = report.comparison_table(agg[agg.petl == "convpass"])
    assert table.loc[table.method == "unpruned", "beta"].item().endswith(report.tables.COLLAPSED_MARK)
    assert not table.loc[table.method == "unpruned", "alpha"].item().endswith(report.tables.COLLAPSED_MARK)


def test_wilson_interval_in_the_tidy_table(df):
    row = df[(df.task == "alpha") & (df.petl == "adapter") & (df.seed == 0) & (df.method == "sls")
             & (df.budget == "a0.3")].iloc[0]
    assert row.top1 == pytest.approx(80.0)
    assert (row.top1_lo, row.top1_hi) == pytest.approx(report.stats.wilson(320, 400))


def test_verdict_of_each_kind(df):
    v = _by_id(df)
    # SLS (80%) vs DepGraph (70%) on nested images: +10 points, and 2 ms vs 1 ms a batch: 2× faster
    assert v["SLS-1"].verdict == "supported"
    ev = v["SLS-1"].evidence
    acc = ev[(ev.measure.str.startswith("A − B")) & (ev.task == "all tasks")].iloc[0]
    assert acc.value == pytest.approx(10.0) and acc.lo > 0 and acc.seeds == 7  # 8 runs, one collapsed
    speed = ev[ev.measure.str.startswith("speed")]
    assert speed.value.between(1.9, 2.1).all() and (speed.lo > 1).all()
    # SGLP (60%) is 20 points below SLS: the claim that it beats the other selectors is contradicted
    assert v["SGLP-1"].verdict == "contradicted"
    # SLS-2: a win over SGLP but a tie with block influence (same accuracy, other images): inconclusive
    assert v["SLS-2"].verdict == "inconclusive"
    bi = v["SLS-2"].evidence
    bi = bi[bi.comparison.str.contains("block_influence") & (bi.task == "all tasks")].iloc[0]
    assert bi.value == pytest.approx(0.0) and bi.lo < 0 < bi.hi and bi.call == "indistinguishable"
    assert "angular" in v["SLS-2"].reason  # the arms this tree lacks are named
    # stored: 10k vs 40k; as a model SLS still keeps its 10k (it leaves the backbone's shape alone) vs
    # DepGraph's 400k: fewer under both conventions
    assert v["SLS-3"].verdict == "supported"
    # no Pear, no SPA in this tier: not run, naming the missing arm and the tier that has it
    for cid in ("Pear-1", "Pear-2", "SPA-1", "SPA-2"):
        assert v[cid].verdict == "not run in this tier"
    assert "adapter drop (run in the full tier)" in v["Pear-1"].reason
    assert "channel-SPA (run in the full tier)" in v["SPA-1"].reason


D6 = {"last_k": 5.0, "random": 10.0, "block_influence": 5.0, "taylor_layer": 5.0}  # SGLP − each at d6


def _overall(result) -> pd.DataFrame:
    """A claim's evidence over all tasks, one row per comparison."""
    ev = result.evidence
    return ev[ev.task == "all tasks"].set_index("comparison")


def test_sglp1_pairs_sglp_with_every_selector_at_each_fixed_depth(df):
    r = _by_id(df)["SGLP-1"]
    ev = _overall(r)
    for method, diff in D6.items():  # each at d6 against SGLP at d6, the depth in the comparison's name
        row = ev.loc[f"SGLP (d6) vs {method} (d6)"]
        assert row.value == pytest.approx(diff) and row.call == "win" and row.seeds == 7
    # at matched: SLS and block influence; never last-k (SLS's own plan there: nothing new)
    assert set(ev.index) == {f"SGLP (d6) vs {m} (d6)" for m in D6} | {
        "SGLP (matched) vs SLS at matched_alpha", "SGLP (matched) vs block_influence (matched)"}
    assert r.verdict == "contradicted"  # the d6 wins do not undo the 20-point loss to SLS at matched
    # angular runs in neither kind here: named, with the tier that runs it (at other depths for d6)
    assert "angular (matched) (run in the full tier)" in r.reason
    assert "angular (d6) (no tier runs it at d6; the full tier at other depths)" in r.reason


def test_sglp1_verdict_from_fixed_depths_alone(df):
    d6_only = df[df.budget != "matched"]  # a tier whose SGLP runs at d6 only
    r = _by_id(d6_only)["SGLP-1"]
    assert r.verdict == "supported" and "SGLP (matched) (in no tier yet)" in r.reason
    assert set(_overall(r).index) == {f"SGLP (d6) vs {m} (d6)" for m in D6}
    # SGLP at d6 with the random draw's predictions (65%): 5 points below last-k, block influence, Taylor
    worse = d6_only.copy()
    rnd = df[(df.method == "random") & (df.budget == "d6")].set_index(["task", "petl", "seed"])["predictions_path"]
    at = (worse.method == "sglp") & (worse.budget == "d6")
    worse.loc[at, "predictions_path"] = [rnd[k] for k in zip(worse[at].task, worse[at].petl, worse[at].seed,
                                                               strict=True)]
    r = _by_id(worse)["SGLP-1"]
    assert r.verdict == "contradicted"
    row = _overall(r).loc["SGLP (d6) vs last_k (d6)"]
    assert row.value == pytest.approx(-5.0) and row.call == "loss"
    # no SGLP at any depth: not run, naming both of its kinds
    r = _by_id(df[df.method != "sglp"])["SGLP-1"]
    assert r.verdict == "not run in this tier" and "SGLP (matched)" in r.reason and "SGLP (dK)" in r.reason


def test_sglp1_needs_no_last_k_at_matched_and_skips_the_full_depth(df):
    base = _by_id(df)["SGLP-1"]
    r = _by_id(df[~((df.method == "last_k") & (df.budget == "matched"))])["SGLP-1"]
    assert r.verdict == base.verdict and r.evidence.equals(base.evidence)
    # d12 keeps all 12 blocks: the unpruned model re-trained, a control and not a selection
    d12 = df[df.method.isin(["sglp", "last_k"]) & (df.budget == "d6")].assign(budget="d12", depth=12)
    r = _by_id(pd.concat([df, d12], ignore_index=True))["SGLP-1"]
    assert not r.evidence.comparison.str.contains("d12").any() and "d12" not in r.reason


def test_collapsed_runs_never_enter_a_verdict(df):
    v = _by_id(df)
    assert any("beta/convpass/seed1" in e for e in v["SLS-1"].excluded)
    # making every other run's SLS collapse too leaves SLS-1 without a clean pair: inconclusive
    worse = df.copy()
    worse.loc[worse.method == "sls", "collapsed"] = "collapsed"
    assert _by_id(worse)["SLS-1"].verdict == "inconclusive"


def test_matched_tables_hold_sls_only_at_matched_alpha_and_rank_per_petl(df):
    agg = report.aggregate(df)
    matched = matched_rows(agg, "a0.3")
    assert set(matched.loc[matched.method == "sls", "budget"]) == {"a0.3"}
    assert report.budget_family("a0.5", "a0.3") == "alpha" and report.budget_family("a0.3", "a0.3") == "matched"
    ranks = rank_table(matched[matched.method != "finetune"])
    assert set(ranks.columns) >= {"petl", "alpha", "beta", "mean rank"}
    for petl in ("adapter", "convpass"):
        r = ranks[ranks.petl == petl].set_index("method")["alpha"]
        # per PETL, 5 rows: SLS, last-k and block influence tie at 80% (rank 1), DepGraph 4, SGLP 5
        assert sorted(r.tolist()) == [1, 1, 1, 4, 5]
        assert r["SGLP"] == 5 and r["SLS"] == 1


def test_reference_is_chosen_in_one_place(df):
    ref = reference_rows(df)
    assert set(ref.method) == {"finetune"} and len(ref) == 8
    extra = df[df.method == "finetune"].assign(method="adapter_unpruned", key="adapter_unpruned", budget="d12")
    ref = reference_rows(pd.concat([df, extra], ignore_index=True))
    assert set(ref.loc[ref.petl == "adapter", "method"]) == {"adapter_unpruned"}
    assert set(ref.loc[ref.petl == "convpass", "method"]) == {"finetune"}


def test_tables_show_the_reference_the_paired_comparisons_use(df):
    from petlprune.report.tables import RETRAINED_LABEL, comparison_table, retrained_reference

    extra = df[df.method == "finetune"].assign(method="adapter_unpruned", key="adapter_unpruned", budget="d12")
    extra = extra[extra.petl == "adapter"].assign(top1=extra.top1 - 1.5)
    both = pd.concat([df, extra], ignore_index=True)
    agg = report.aggregate(both)
    assert set(agg.loc[retrained_reference(agg), "method"]) == {"adapter_unpruned"}
    # last_k at the fine-tune's depth is the control too (paper.yaml's `last_k: [d12]`); at matched it is not
    ft = both[both.method == "finetune"]
    deep = pd.concat([ft, ft.assign(method="last_k", key="last_k", budget="d12")], ignore_index=True)
    assert (retrained_reference(deep) == (deep.method == "last_k")).all()
    assert not retrained_reference(both[both.method.isin(["finetune", "last_k"])]).any()
    matched = matched_rows(agg, "a0.3")
    table = comparison_table(matched[matched.petl == "adapter"])
    assert list(table.method[:2]) == ["unpruned", RETRAINED_LABEL]  # the fine-tune, then its control
    ref = reference_rows(both)
    shown = agg[retrained_reference(agg)].set_index("task")["top1_mean"]
    for task, row in ref[ref.petl == "adapter"].groupby("task"):
        assert shown[task] == pytest.approx(row.top1.mean())  # the row in the table is the reference


def test_random_draws_of_one_run_are_one_stratum_of_their_mean(df, tmp_path):
    from petlprune.report.claims import paired_versus

    sglp = df[(df.method == "sglp") & (df.budget == "d6") & (df.petl == "adapter") & (df.seed == 0)]
    draw0 = df[(df.key == "random.0") & (df.petl == "adapter") & (df.seed == 0)]
    rows = []
    for i, row in enumerate(draw0.itertuples()):  # a second draw, right on every image of the run
        with np.load(row.predictions_path) as npz:
            labels = npz["labels"]
        path = tmp_path / f"draw1-{i}" / "predictions.npz"
        path.parent.mkdir()
        np.savez(path, labels=labels, pred=labels, split=np.array("test"))
        rows.append(draw0.loc[[row.Index]].assign(key="random.1", draw=1, top1=100.0, predictions_path=str(path)))
    draws = pd.concat([draw0, *rows], ignore_index=True)
    one, both = paired_versus(sglp, draw0), paired_versus(sglp, draws)
    assert one.seeds == both.seeds == sglp.shape[0] == 2  # one stratum per run (2 tasks), not per draw
    # against the mean of the draws: 65% and 100% right, so SGLP's 75% is 7.5 points below on average
    assert one.diff == pytest.approx(10.0) and both.diff == pytest.approx(75.0 - (65.0 + 100.0) / 2)


def test_claim_figure_draws_each_measure_on_its_own_axis_and_no_difference_line():
    from petlprune.report.claims import _UNITS, CLAIMS, ClaimResult, claim_figure

    rows = [("SLS vs DepGraph (matched)", _UNITS["accuracy"], "digits", -2.0, -5.0, 1.0, "indistinguishable"),
            ("SLS vs DepGraph (matched)", _UNITS["accuracy"], "textures", -6.0, -8.0, -4.0, "loss"),
            ("SLS vs DepGraph (matched)", _UNITS["speed"], "digits", 1.1, 1.05, 1.15, "win")]
    evidence = pd.DataFrame(rows, columns=["comparison", "measure", "task", "value", "lo", "hi", "call"])
    fig = claim_figure(ClaimResult(CLAIMS[0], "inconclusive", "", evidence))
    axes = fig.get_axes()
    assert [ax.get_xlabel() for ax in axes] == [_UNITS["accuracy"], _UNITS["speed"]]
    lines = [[ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == "--"] for ax in axes]
    assert lines == [[0.0], [1.0]]


def test_parts_list_raw_and_holm_p_and_a_minimum_detectable_effect(df):
    r = _by_id(df)["SLS-2"]
    parts = r.parts.set_index("comparison")
    assert {"p_raw", "p_holm", "call", "mde_points"} <= set(parts.columns)
    # Holm: never below the raw p, and the smallest raw p is multiplied by the number of measured parts
    assert (parts["p_holm"] >= parts["p_raw"] - 1e-12).all()
    m = int(parts["p_raw"].notna().sum())
    i = parts["p_raw"].idxmin()
    assert parts.loc[i, "p_holm"] == pytest.approx(min(1.0, m * parts.loc[i, "p_raw"]))
    bi = parts.loc[parts.index.str.contains("block_influence")].iloc[0]
    assert bi["call"] == "indistinguishable" and 0 < bi["mde_points"] < 20
    assert "would probably have been seen" in r.reason and "Holm" in r.reason


def test_one_seed_verdicts_say_they_are_about_one_trained_model(df):
    one = {r.claim.id: r for r in evaluate_claims(df[df["seed"] == 0], "a0.3", TIERS)}
    assert one["SLS-1"].seeds == 1 and not one["SLS-1"].settled
    assert "one trained model per method" in report.claims.verdict_line(one["SLS-1"])
    assert _by_id(df)["SLS-1"].caveat == ""  # two seeds


def test_leaderboard_verdicts_name_only_the_arms_of_measured_parts(df):
    from petlprune.report.leaderboard import method_verdicts

    v = method_verdicts(evaluate_claims(df, "a0.3", TIERS))
    assert "SLS-1 ✓" in v["sls"] and "SLS-1 ✓" in v["depgraph"]
    assert "angular" not in v  # its parts of SLS-2 and SGLP-1 did not run in this tree
