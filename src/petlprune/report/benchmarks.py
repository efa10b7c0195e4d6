"""The benchmark suite's JSON files (``results/benchmarks-suite/*.json``) → the book page's Markdown.

The scripts in ``benchmarks/`` write one JSON each; ``petlprune book`` calls :func:`benchmarks_page`
and writes ``book/generated/benchmarks.md``, which ``book/reliability.md`` includes. A JSON that is
absent becomes one line saying which command makes it; one that cannot be read says so on the page
(the book still builds: the suite is optional, it does not run in the DAG).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from petlprune.io import read_json
from petlprune.report.tables import to_markdown

__all__ = ["SUITE_DIR", "BENCHMARKS", "benchmarks_page", "machine_line"]

SUITE_DIR = "benchmarks-suite"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(rows: list[Mapping[str, Any]], columns: Mapping[str, str], digits: int = 2) -> str:
    """Markdown table of ``rows`` with ``columns`` {key: header}; a missing key shows as —."""
    return to_markdown(pd.DataFrame([{h: _fmt(r.get(k), digits) for k, h in columns.items()} for r in rows]))


def machine_line(doc: Mapping[str, Any]) -> str:
    """When and where a benchmark ran, with the load average (timings under load are noisy)."""
    m = doc.get("machine", {})
    return (f"Measured {m.get('finished', '?')} on {m.get('cpus', '?')} CPUs (torch threads: {m.get('threads', '?')}), "
            f"load average {_fmt(m.get('load_before'))} before and {_fmt(m.get('load_after'))} after; "
            f"command: `{doc.get('command', '?')}`.")


def _stage_costs(doc: Mapping[str, Any]) -> str:
    total = doc["total"]
    rows = [{**r, "share": 100 * r["share"] if r.get("share") is not None else None} for r in doc["stages"]]
    return "\n\n".join([
        _table(rows, {"stage": "stage", "jobs": "jobs", "wall_s": "wall s", "cpu_s": "CPU s",
                      "max_rss_mb": "peak RSS MB", "share": "% of wall"}, 1),
        f"Total: {total['jobs']} jobs, {total['wall_s'] / 60:.1f} job-minutes of wall time, "
        f"{total['cpu_s'] / 60:.1f} CPU-minutes (jobs run in parallel: the study's wall clock is between "
        "the total divided by the cores and the total). Notebook and book rules have no benchmark file.",
    ])


def _features_pass(doc: Mapping[str, Any]) -> str:
    return "\n\n".join([
        _table(doc["rows"], {"way": "way", "passes": "passes over the data", "block_evals": "block evaluations",
                             "seconds": "seconds", "data_seconds": "of which reading data (s)"}),
        f"Task `{doc['task']}`, {doc['images']} images, {doc['blocks']} blocks: one pass is "
        f"**{doc['speedup']:.1f}×** faster; the features agree to {doc['max_abs_diff']:.1e}.",
    ])


def _tsne_backends(doc: Mapping[str, Any]) -> str:
    return "\n\n".join([
        _table(doc["rows"], {"task": "task", "n": "points", "blocks_embedded_opentsne": "blocks (openTSNE)",
                             "seconds_opentsne": "openTSNE s", "blocks_embedded_sklearn": "blocks (sklearn)",
                             "seconds_sklearn": "sklearn s", "depth_opentsne": "depth (openTSNE)",
                             "depth_sklearn": "depth (sklearn)", "depth_recorded": "depth (study)",
                             "max_silhouette_diff": "max |Δ silhouette|"}, 3),
        f"The SLS depth is the same with both libraries on **{doc['same_depth']} of {doc['tasks']}** tasks; "
        f"per embedded block sklearn takes {doc['median_speedup_per_block']:.2f}× openTSNE's time (median).",
    ])


def _pruned_speedup(doc: Mapping[str, Any]) -> str:
    batches = doc.get("batch_sizes", [1, 64])
    cols = {"task": "task", "model": "model", "depth": "depth", "ideal": "FLOPs-ideal"}
    for b in batches:
        cols |= {f"measured_b{b}": f"measured b{b}", f"ratio_b{b}": f"ratio b{b}",
                 f"ratio_cpu_b{b}": f"ratio (CPU) b{b}", f"stored_b{b}": f"DAG's b{b}"}
    parts = [_table(doc["rows"], cols)]
    summary = doc["summary"]
    for b in batches:
        s = summary.get(f"b{b}")
        if not s or s.get("mean_ratio_pruned") is None:
            continue
        cpu = s.get("mean_ratio_cpu_pruned")
        parts.append(
            f"Batch {b}: over the models with fewer than {summary['full_depth']} blocks, measured / ideal is "
            f"**{s['mean_ratio_pruned']:.2f}** on average (lowest {s['min_ratio_pruned']:.2f}"
            + (f"; {cpu:.2f} from CPU time" if cpu is not None else "") + "). "
            f"A depth scan of one model (depths {summary.get('scan_depths', '?')}) fits latency = "
            f"{s['latency_fixed_ms']:.2f} ms + {s['latency_per_block_ms']:.3f} ms per block: the fixed part is "
            f"{100 * s['latency_fixed_share']:.0f}% of the full model's time but "
            f"{100 * summary['flops_fixed_share']:.0f}% of its FLOPs, which predicts a ratio of "
            f"{s['mean_time_ideal_ratio']:.2f}.")
    parts.append("Ratio = measured / FLOPs-ideal speed-up (wall time; *CPU* from this process's CPU time, less "
                 "sensitive to other load); *DAG's* = the speed-up from the `efficiency.json` files, timed while "
                 "other jobs ran. Models that keep every block have an ideal of 1: their spread shows the noise.")
    return "\n\n".join(parts)


def _trainer_overhead(doc: Mapping[str, Any]) -> str:
    return "\n\n".join([
        _table(doc["rows"], {"loop": "loop", "median_s": "median s", "images_per_s": "images/s", "all_s": "all rounds (s)"}),
        f"`petlprune.train.fit` runs at **{doc['ratio']:.2f}** of the bare loop's throughput "
        f"({doc['images']} images × {doc['epochs']} epoch(s), batch {doc['batch_size']}, "
        f"{doc['trainable']:,} trainable parameters; model: {doc['model']}).",
    ])


def _gpu_check(doc: Mapping[str, Any]) -> str:
    rows = [r for r in doc.get("throughput", []) if r.get("images_per_s") is not None]
    parts = [f"On **{doc.get('gpu', '?')}** (CUDA {doc.get('cuda', '?')}), {_fmt(doc.get('seconds'), 0)} s in all.",
             _table(rows, {"measurement": "measurement", "batch": "batch", "images_per_s": "images/s",
                           "latency_ms": "ms per batch", "peak_mem_gb": "peak GPU memory (GiB)"}, 1)]
    for key, label in (("pytest", "`pytest -m gpu`"), ("rehearsal", "Rehearsal (12 blocks, one task, real DAG)")):
        step = doc.get(key)
        if step:
            what = step.get("summary") or (f"{step.get('jobs_done')} of {step.get('jobs')} jobs" if key == "rehearsal"
                                           else "")
            parts.append(f"{label}: **{'passed' if step.get('ok') else 'FAILED'}**, {what} "
                         f"({_fmt(step.get('seconds'), 0)} s){'; ' + step['error'] if step.get('error') else ''}.")
    return "\n\n".join(parts)


# name → (section title, what it answers, renderer); the order of the page.
BENCHMARKS: dict[str, tuple[str, str, Callable[[Mapping[str, Any]], str]]] = {
    "stage_costs": ("Cost of each stage", "Wall and CPU time per rule of the study, from Snakemake's benchmark files.",
                    _stage_costs),
    "features_pass": ("Block features: one pass vs one pass per block",
                      "Collecting every block's CLS token in one forward pass against one pass per block.",
                      _features_pass),
    "tsne_backends": ("t-SNE: openTSNE vs scikit-learn",
                      "Time of SLS's t-SNE walk with each library on the same block features, and whether the "
                      "chosen depth is the same.", _tsne_backends),
    "pruned_speedup": ("Pruned models: measured vs FLOPs-ideal speed-up",
                       "Every pruned model timed against its fine-tuned model (interleaved rounds, medians).",
                       _pruned_speedup),
    "trainer_overhead": ("Trainer overhead", "`petlprune.train.fit` against a bare PyTorch loop on the same "
                         "model and data.", _trainer_overhead),
    "gpu_check": ("GPU check", "The paper tier on a CUDA machine (`sh benchmarks/gpu_check.sh`): the `gpu` tests, "
                  "the 12-block rehearsal, bf16 training and inference throughput of ViT-B/16, peak GPU memory. "
                  "It runs only where a GPU is lent; if the line below says *not measured*, no GPU has run it "
                  "for this build and no GPU figure on this page exists.", _gpu_check),
}


def benchmarks_page(results_dir: str | Path, suite_dir: str | Path | None = None) -> str:
    """Markdown for the performance part of the page: one section per benchmark, from its JSON.

    Args:
        results_dir: the results tree (the JSONs are in ``{results_dir}/benchmarks-suite``).
        suite_dir: another folder holding the JSONs.
    """
    folder = Path(suite_dir) if suite_dir is not None else Path(results_dir) / SUITE_DIR
    parts = []
    for name, (title, what, render) in BENCHMARKS.items():
        path = folder / f"{name}.json"
        parts.append(f"## {title}\n\n{what}")
        if not path.is_file():
            parts.append(f"Not measured for this build: run `python benchmarks/{name}.py --results "
                         f"{results_dir}`, then rebuild the book (`petlprune book`).")
            continue
        try:
            doc = read_json(path)
            body = render(doc)
        except (ValueError, KeyError, TypeError, ZeroDivisionError) as err:
            parts.append(f"`{path}` could not be read ({type(err).__name__}: {err}); re-run "
                         f"`python benchmarks/{name}.py`.")
            continue
        parts += [body, machine_line(doc)]
    return "\n\n".join(parts) + "\n"
