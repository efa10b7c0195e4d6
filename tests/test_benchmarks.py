"""The benchmark scripts' logic on tiny inputs, and the book page made from their JSON files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _suite  # noqa: E402
import features_pass  # noqa: E402
import pruned_speedup  # noqa: E402
import stage_costs  # noqa: E402
import trainer_overhead  # noqa: E402
import tsne_backends  # noqa: E402

from petlprune.report.benchmarks import BENCHMARKS, benchmarks_page  # noqa: E402

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _tiny_vit(depth: int = 3):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=24,
                             depth=depth, num_heads=2, num_classes=3).eval()


def _bench_tree(root: Path) -> Path:
    bench = root / "benchmarks"
    (bench / "finetune").mkdir(parents=True)
    (bench / "finetune" / "a.tsv").write_text(HEADER + "10.0\t0:00:10\t100\t0\t0\t0\t0\t0\t50\t8.0\n")
    # a rule run with repeat(): two rows, averaged; an NA figure is skipped
    (bench / "finetune" / "b.tsv").write_text(HEADER + "20.0\t0:00:20\t300\t0\t0\t0\t0\t0\t50\tNA\n"
                                              + "40.0\t0:00:40\t500\t0\t0\t0\t0\t0\t50\t4.0\n")
    (bench / "book.tsv").write_text(HEADER + "10.0\t0:00:10\t50\t0\t0\t0\t0\t0\t50\t2.0\n")
    return bench


def test_stage_costs_known_answer(tmp_path):
    jobs = stage_costs.read_benchmark_files(_bench_tree(tmp_path))
    assert {j["job"]: j["s"] for j in jobs} == {"book": 10.0, "finetune/a": 10.0, "finetune/b": 30.0}
    rows, total = stage_costs.stage_table(jobs)
    assert [r["stage"] for r in rows] == ["finetune", "book"]  # largest first
    fin = rows[0]
    assert fin["jobs"] == 2 and fin["wall_s"] == 40.0 and fin["cpu_s"] == 12.0 and fin["max_rss_mb"] == 400.0
    assert total == {"wall_s": 50.0, "cpu_s": 14.0, "jobs": 3}
    assert sum(r["share"] for r in rows) == pytest.approx(1.0) and fin["share"] == pytest.approx(0.8)


def test_stage_costs_takes_cpu_and_rss_of_a_worker_job_from_its_log(tmp_path):
    from petlprune import worker
    from petlprune.worker import RESOURCE_PREFIX

    assert stage_costs.job_resources is worker.job_resources  # one reader, next to the writer
    bench = _bench_tree(tmp_path)
    log = tmp_path / "logs" / "finetune" / "a.log"
    log.parent.mkdir(parents=True)
    # the client's own figures (100 MB, 8 s) are in the benchmark file; the child's are in the log
    log.write_text("finetune: epoch 1 ...\n" + RESOURCE_PREFIX + '{"cpu_time": 9.5, "max_rss": 612.0}\n')
    jobs = {j["job"]: j for j in stage_costs.read_benchmark_files(bench)}
    assert (jobs["finetune/a"]["s"], jobs["finetune/a"]["cpu_time"], jobs["finetune/a"]["max_rss"]) == (10.0, 9.5, 612.0)
    assert jobs["finetune/b"]["max_rss"] == 400.0  # no log: the benchmark's figures


def test_stage_costs_main_writes_json_where_the_book_reads(tmp_path):
    _bench_tree(tmp_path)
    assert stage_costs.main(["--results", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / _suite.SUITE_DIR / "stage_costs.json").read_text())
    assert doc["benchmark"] == "stage_costs" and doc["total"]["jobs"] == 3
    assert {"cpus", "load_before", "load_after", "threads"} <= set(doc["machine"])
    page = benchmarks_page(tmp_path)
    assert "| finetune" in page and "0.8 job-minutes" in page
    assert "python benchmarks/tsne_backends.py" in page  # the absent ones say how to make them


def test_per_block_features_equal_one_pass():
    from petlprune.analysis.features import block_features

    model = _tiny_vit()
    data = [(torch.randn(5, 3, 16, 16), torch.arange(5) % 3) for _ in range(2)]
    cls, _, labels = block_features(model, data)
    loop = features_pass.per_block_features(model, data)
    assert loop.shape == cls.shape == (3, 10, 24)
    np.testing.assert_allclose(loop, cls, atol=1e-6)


def test_sls_walk_with_a_backend_matches_select_depth():
    from petlprune.analysis.cluster import silhouette
    from petlprune.methods.sls import select_depth

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    centres = rng.normal(size=(3, 2)) * 4
    # separation grows with depth: blocks 0..5, the early ones nearly random
    cls = np.stack([centres[labels] * s + rng.normal(size=(30, 2)) for s in (0.0, 0.0, 0.1, 0.8, 1.0, 1.0)])
    walk = tsne_backends.walk_with(lambda x: x, cls, labels, alpha=0.5)
    curve = [silhouette(cls[i], labels) for i in range(6)]
    assert walk["depth"] == select_depth(curve, 0.5)
    assert 1 < walk["depth"] < 6  # the fixture is a real decision, not an edge case
    assert set(walk["scores"]) == set(range(walk["depth"] - 2, 6))  # only what the walk needs
    assert all(walk["scores"][i] == pytest.approx(curve[i]) for i in walk["scores"])


def test_sklearn_embed_is_normalised_and_seeded():
    x = np.random.default_rng(0).normal(size=(40, 5))
    a = tsne_backends.sklearn_embed(x, perplexity=5, seed=0)
    assert a.shape == (40, 2) and a.min() == 0.0 and a.max() == 1.0
    np.testing.assert_array_equal(a, tsne_backends.sklearn_embed(x, perplexity=5, seed=0))


def test_speedup_rows_and_depth_fit_known_answers():
    base = {"flops": 120.0, "latency_ms": {1: 10.0, 64: 100.0}, "cpu_ms": {1: 10.0, 64: 100.0}}
    pruned = [{"key": "sls-a0.3", "depth": 6, "flops": 60.0, "latency_ms": {1: 8.0, 64: 60.0},
               "cpu_ms": {1: 8.0, 64: 50.0}}]
    (row,) = pruned_speedup.speedup_rows(base, pruned, [1, 64])
    assert row["ideal"] == 2.0
    assert row["measured_b1"] == 1.25 and row["ratio_b1"] == 0.625
    assert row["measured_b64"] == pytest.approx(100 / 60) and row["ratio_b64"] == pytest.approx(100 / 120)
    assert row["ratio_cpu_b64"] == 1.0
    a, b = pruned_speedup.depth_fit([3, 6, 12], [2 + 0.5 * d for d in (3, 6, 12)])
    assert a == pytest.approx(2.0) and b == pytest.approx(0.5)


def test_interleaved_latency_times_every_model():
    from petlprune.models.surgery import keep_blocks

    full = _tiny_vit(depth=4)
    short = keep_blocks(_tiny_vit(depth=4), [0])
    lat = pruned_speedup.interleaved_latency({"full": full, "short": short}, 8, rounds=2, repeats=3, warmup=1,
                                             input_shape=(3, 16, 16))
    assert set(lat) == {"full", "short"}
    assert all(v["wall"] > 0 and v["cpu"] >= 0 for v in lat.values())


def test_bare_loop_trains_only_trainable_parameters():
    model = _tiny_vit()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    head = model.head.weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16, generator=g), torch.arange(32) % 3
    loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    first = trainer_overhead.bare_loop(model, loader, epochs=1, lr=0.01)
    last = trainer_overhead.bare_loop(model, loader, epochs=20, lr=0.01)
    assert last < first  # it learns
    assert not torch.equal(model.head.weight, head)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_format_table_and_default_location(tmp_path):
    text = _suite.format_table([{"a": 1, "b": 0.12345}, {"a": 10, "b": None}])
    assert text.splitlines()[0].split("|")[0].strip() == "a" and "0.123" in text and "—" in text
    assert _suite.default_out(tmp_path, "x") == tmp_path / "benchmarks-suite" / "x.json"


def test_page_without_any_json_says_how_to_run_each(tmp_path):
    page = benchmarks_page(tmp_path)
    for name in BENCHMARKS:
        assert f"python benchmarks/{name}.py --results {tmp_path}" in page
        assert (ROOT / "benchmarks" / f"{name}.py").is_file()


def test_page_survives_an_unreadable_json(tmp_path):
    folder = tmp_path / "benchmarks-suite"
    folder.mkdir()
    (folder / "trainer_overhead.json").write_text("{not json")
    (folder / "features_pass.json").write_text(json.dumps({"benchmark": "features_pass"}))  # keys missing
    page = benchmarks_page(tmp_path)
    assert "trainer_overhead.json` could not be read" in page and "features_pass.json` could not be read" in page


def test_page_renders_each_benchmark(tmp_path):
    machine = {"cpus": 2, "threads": 1, "load_before": 0.1, "load_after": 0.2, "finished": "now"}
    docs = {
        "features_pass": {"task": "digits", "images": 10, "blocks": 3, "speedup": 4.0, "max_abs_diff": 0.0,
                          "rows": [{"way": "one pass", "passes": 1, "block_evals": 3, "seconds": 1.0}]},
        "tsne_backends": {"rows": [{"task": "digits", "depth_opentsne": 5, "depth_sklearn": 5}], "same_depth": 1,
                          "tasks": 1, "median_speedup_per_block": 2.0},
        "pruned_speedup": {"rows": [{"task": "t", "model": "sls-a0.3", "ratio_b64": 0.91}], "batch_sizes": [1, 64],
                           "summary": {"full_depth": 12, "flops_fixed_share": 0.02,
                                       "b64": {"mean_ratio_pruned": 0.91, "min_ratio_pruned": 0.8,
                                               "mean_ratio_cpu_pruned": 0.95,
                                               "latency_fixed_ms": 1.0, "latency_per_block_ms": 2.0,
                                               "latency_fixed_share": 0.04, "mean_time_ideal_ratio": 0.97}}},
        "trainer_overhead": {"rows": [{"loop": "fit", "images_per_s": 100.0}], "ratio": 0.97, "ratio_cpu": 0.98,
                             "images": 8, "epochs": 1, "batch_size": 4, "trainable": 1234, "model": "random"},
    }
    folder = tmp_path / "benchmarks-suite"
    folder.mkdir()
    for name, doc in docs.items():
        (folder / f"{name}.json").write_text(json.dumps({"benchmark": name, "command": "c", "machine": machine, **doc}))
    page = benchmarks_page(tmp_path)
    assert "could not be read" not in page
    assert "**4.0×**" in page and "**1 of 1**" in page and "0.91" in page and "**0.97**" in page
    assert page.count("load average 0.10 before") == 4


def test_assemble_book_writes_the_benchmarks_page(tmp_path):
    import nbformat

    from petlprune.report.book import assemble_book

    results, book = tmp_path / "results", tmp_path / "book"
    (results / "notebooks").mkdir(parents=True)
    (results / "runs").mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Summary")]),
                   results / "notebooks" / "summary.ipynb")
    book.mkdir()
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    _bench_tree(results)
    stage_costs.main(["--results", str(results)])
    assemble_book(results, book)
    page = (book / "generated" / "benchmarks.md").read_text()
    assert "## Cost of each stage" in page and "| finetune" in page
    assert "python benchmarks/trainer_overhead.py" in page


def test_roofline_counts_training_flops_of_what_runs():
    """Backward FLOPs are those autograd runs (known answers): with the first layer frozen only the
    second layer's weight gradient runs (its input needs no gradient); with it trainable, also the
    gradient into the first layer's output and the first layer's weight gradient."""
    import roofline

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    fwd = 2 * (8 * 16 + 16 * 4)  # per image
    train, forward = roofline.train_flops_per_image(model, x, y, "fp32")
    assert forward == fwd and train == fwd + 2 * 16 * 4 + 2 * 16 * 4 + 2 * 8 * 16
    model[0].requires_grad_(False)
    train, forward = roofline.train_flops_per_image(model, x, y, "fp32")
    assert forward == fwd and train == fwd + 2 * 16 * 4
    assert roofline.gemm_rate(64, 64, 64, torch.float32, seconds=0.01) > 0
