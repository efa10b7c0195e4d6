"""Reliability matrix: bad inputs fail clearly and leave nothing behind; the DAG survives SIGKILL and
is deterministic across runs and core counts.

The bad-input matrix (``BAD_INPUTS``) runs every case through the entry point a user meets (a
``petlprune`` stage, or ``snakemake`` for the config) and checks two things: the error names the
culprit (file, key, value) and no output is left behind. The library-level behaviour of each case
has its own unit test, named in the case's ``see_also``; the matrix does not repeat those, it checks
the stage's contract on top (fails before writing, says where).

The slow tests run a slice of the smoke config (``workflow/config/smoke.yaml``: both tasks, every
stage up to re-training, three methods) in scratch folders: one run with ``--cores 2`` that is SIGKILLed early and resumed, one fresh run with ``--cores 1``;
their results must be identical (same seed → same metrics; cores 1 vs 2; kill + resume changes nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from petlprune.cli import main
from petlprune.data.writer import write_split_folder

ROOT = Path(__file__).resolve().parents[1]
ARCH = "vit_tiny_patch16_224"
TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 3, "num_heads": 2}
TRAIN = {"epochs": 1, "lr": 0.003, "weight_decay": 0.0001, "warmup_epochs": 0, "batch_size": 16}


def _images(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    colours = rng.integers(0, 256, size=(classes, 3))
    images = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 40, (n, 16, 16, 3)), 0, 255)
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """A tiny 3-class task folder and a tiny cached backbone (random weights: nothing here trains long)."""
    root = tmp_path_factory.mktemp("reliability")
    images, labels = _images(40, 3, seed=0)
    write_split_folder(root / "task", images, labels,
                       {"train800": np.arange(0, 16), "val200": np.arange(16, 24),
                        "train800val200": np.arange(0, 24), "test": np.arange(24, 40)},
                       ["r", "g", "b"], {"seed": 0, "kind": "embedded", "description": "reliability colours"})
    main(["pretrain", "--out", str(root / "backbone.pt"), "--timm-model", ARCH, "--timm-kwargs", json.dumps(TINY),
          "--weights", "random", "--seed", "0", "--threads", "1"])
    return {"task": root / "task", "backbone": root / "backbone.pt"}


def _task_copy(env: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(env["task"], tmp_path / "task"))


def _finetune_argv(data: Path, backbone: Path, out: Path, options: str = "{}") -> list[str]:
    return ["finetune", "--data", str(data), "--backbone", str(backbone), "--petl", "adapter",
            "--petl-options", options, "--train", json.dumps(TRAIN), "--seed", "0", "--threads", "1",
            "--out", str(out), "--device", "cpu"]


def expect_stage_failure(argv: list[str], error: type[BaseException], match: str, out: Path) -> BaseException:
    """The stage raises ``error`` whose message matches ``match``, and ``out`` does not exist after."""
    with pytest.raises(error, match=match) as info:
        main(argv)
    assert not out.exists(), f"partial output left behind: {sorted(p.name for p in out.rglob('*'))}"
    return info.value


def expect_config_failure(mutate: Callable[[dict], dict], culprit: str, tmp_path: Path) -> None:
    """``snakemake -n`` in an empty scratch folder stops on validation naming ``culprit``; writes no results."""
    config = mutate(yaml.safe_load((ROOT / "workflow/config/smoke.yaml").read_text()))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(tmp_path / "config.yaml"),
         "--directory", str(tmp_path), "-s", str(ROOT / "Snakefile")],
        capture_output=True, text=True, timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0 and culprit in output, output[-2000:]
    assert "Job stats" not in output  # stopped before building the DAG
    assert not (tmp_path / config.get("results", "results")).exists()


# --------------------------------------------------------------------------------------------------
# the matrix


@dataclass(frozen=True)
class Case:
    check: Callable[[dict[str, Path], Path], None]
    see_also: str  # the unit test(s) of the library-level behaviour


def _unknown_config_key(env, tmp_path):
    expect_config_failure(lambda c: {**c, "epochs": 3}, "epochs", tmp_path)


def _wrong_type(env, tmp_path):
    expect_config_failure(lambda c: {**c, "finetune": {**c["finetune"], "epochs": "ten"}}, "ten", tmp_path)


def _unknown_method(env, tmp_path):
    expect_config_failure(lambda c: {**c, "methods": {**c["methods"], "magic_prune": {}}}, "magic_prune", tmp_path)


def _with_method(c: dict, instance: str, **options) -> dict:
    return {**c, "methods": {**c["methods"], instance: {**c["methods"][instance], **options}}}


def _with_budgets(c: dict, instance: str, budgets: list[str]) -> dict:
    return {**c, "budgets": {**c["budgets"], instance: budgets}}


def _method_option_typo(env, tmp_path):
    spa = {k: v for k, v in _smoke()["methods"]["spa"].items() if k != "densities"}
    expect_config_failure(lambda c: {**c, "methods": {**c["methods"], "spa": {**spa, "densites": [0.5]}}},
                          "config key methods.spa.densites: method 'spa': unknown option 'densites'", tmp_path)


def _method_option_wrong_type(env, tmp_path):
    expect_config_failure(lambda c: _with_method(c, "pear", batches="two"),
                          "config key methods.pear.batches: method 'pear': option 'batches' must be of type int",
                          tmp_path)


def _method_option_not_allowed(env, tmp_path):
    expect_config_failure(lambda c: _with_method(c, "pear", kc="magic"),
                          "config key methods.pear.kc: method 'pear': option 'kc' must be one of", tmp_path)


def _budget_kind_not_taken(env, tmp_path):
    expect_config_failure(lambda c: _with_budgets(c, "pear", ["d4"]),
                          "config key budgets.pear: method 'pear' takes ratio (r…) budgets, not 'd4'", tmp_path)


def _density_not_scheduled(env, tmp_path):
    expect_config_failure(lambda c: _with_budgets(c, "spa", ["p0.5", "p0.3"]),
                          "config key budgets.spa: method 'spa': no masks for p0.3", tmp_path)


def _matched_alpha_not_an_sls_budget(env, tmp_path):
    expect_config_failure(lambda c: {**c, "matched_alpha": "a0.1"},
                          "config key matched_alpha: 'a0.1' is not an SLS budget", tmp_path)


def _missing_dataset_folder(env, tmp_path):
    missing = tmp_path / "no-such-task"
    expect_stage_failure(_finetune_argv(missing, env["backbone"], tmp_path / "out"), ValueError,
                         rf"{missing}: dataset folder not found", tmp_path / "out")


def _list_file_missing_image(env, tmp_path):
    task = _task_copy(env, tmp_path)
    lines = (task / "train800val200.txt").read_text().splitlines()
    lines[4] = "images/99999.png " + lines[4].split()[1]
    (task / "train800val200.txt").write_text("\n".join(lines) + "\n")
    expect_stage_failure(_finetune_argv(task, env["backbone"], tmp_path / "out"), ValueError,
                         r"train800val200\.txt:5: image not found: .*99999\.png", tmp_path / "out")


def _corrupt_image(env, tmp_path):
    task = _task_copy(env, tmp_path)
    (task / "images" / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    expect_stage_failure(_finetune_argv(task, env["backbone"], tmp_path / "out"), ValueError,
                         r"train800val200\.txt:4: cannot read image .*00003\.png", tmp_path / "out")


def _label_out_of_range(env, tmp_path):
    task = _task_copy(env, tmp_path)
    lines = (task / "train800val200.txt").read_text().splitlines()
    lines[6] = lines[6].split()[0] + " 7"
    (task / "train800val200.txt").write_text("\n".join(lines) + "\n")
    expect_stage_failure(_finetune_argv(task, env["backbone"], tmp_path / "out"), ValueError,
                         r"train800val200\.txt:7: label 7 outside \[0, 3\)", tmp_path / "out")


def _truncated_checkpoint(env, tmp_path):
    from petlprune.io import CheckpointError

    data = env["backbone"].read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    expect_stage_failure(_finetune_argv(env["task"], bad, tmp_path / "out"), CheckpointError,
                         rf"{bad}: corrupt or truncated checkpoint", tmp_path / "out")


class _Payload:
    """Pickles to a call of os.system: loading it without weights_only would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickled_code_checkpoint(env, tmp_path):
    import torch

    from petlprune.io import CheckpointError

    marker, bad = tmp_path / "code-ran", tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": _Payload(marker)}, bad)
    expect_stage_failure(_finetune_argv(env["task"], bad, tmp_path / "out"), CheckpointError,
                         rf"{bad}: refused to load: it holds more than tensors", tmp_path / "out")
    assert not marker.exists()  # the pickled call never ran


def _nan_loss(env, tmp_path):
    from petlprune.train import NonFiniteLossError

    expect_stage_failure(_finetune_argv(env["task"], env["backbone"], tmp_path / "out", '{"scale": NaN}'),
                         NonFiniteLossError, r"non-finite training loss .* epoch 1, step 1/", tmp_path / "out")


def _output_not_writable(env, tmp_path):
    # A regular file where the output's parent folder should be: unwritable even for root (chmod is not).
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    out = blocker / "run" / "finetune"
    start = time.perf_counter()
    expect_stage_failure(_finetune_argv(env["task"], env["backbone"], out), OSError,
                         rf"{out}: cannot write the output here", out)
    assert blocker.read_text() == "a file, not a folder"
    assert time.perf_counter() - start < 5  # refused before any training


BAD_INPUTS: dict[str, Case] = {
    "unknown config key": Case(_unknown_config_key, "test_config.py::test_bad_config_fails_before_any_job_naming_the_key"),
    "wrong type": Case(_wrong_type, "test_config.py::test_bad_config_fails_before_any_job_naming_the_key"),
    "unknown method": Case(_unknown_method, "test_config.py::test_bad_config_fails_before_any_job_naming_the_key"),
    "method option typo": Case(_method_option_typo, "test_config.py::test_bad_method_config_names_the_key"),
    "method option of the wrong type": Case(_method_option_wrong_type, "test_config.py::test_bad_method_config_names_the_key"),
    "method option value not allowed": Case(_method_option_not_allowed, "test_config.py::test_bad_method_config_names_the_key"),
    "budget kind the method does not take": Case(_budget_kind_not_taken, "test_config.py::test_bad_method_config_names_the_key"),
    "density budget the schedule does not record": Case(_density_not_scheduled,
                                                        "test_config.py::test_bad_method_config_names_the_key"),
    "matched_alpha not an SLS budget": Case(_matched_alpha_not_an_sls_budget,
                                            "test_config.py::test_matched_alpha_must_be_an_sls_budget"),
    "missing dataset folder": Case(_missing_dataset_folder, "test_data_vtab.py::test_missing_folder"),
    "list file names a missing image": Case(_list_file_missing_image, "test_data_vtab.py::test_real_vtab_layout_and_import"),
    "corrupt image": Case(_corrupt_image, "test_data_vtab.py::test_corrupt_image_lazy_and_cached, ::test_truncated_image"),
    "label out of range": Case(_label_out_of_range, "test_data_vtab.py::test_bad_line_names_file_and_line"),
    "truncated checkpoint": Case(_truncated_checkpoint, "petlprune.io.load_checkpoint"),
    "checkpoint with pickled code": Case(_pickled_code_checkpoint, "petlprune.io.load_checkpoint"),
    "NaN loss": Case(_nan_loss, "test_train.py::test_non_finite_loss_names_epoch_and_step, "
                                "test_train_stages.py::test_finetune_nan_writes_nothing"),
    "output path not writable": Case(_output_not_writable, "petlprune.io.check_writable"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_fails_clearly_and_writes_nothing(case: str, env: dict[str, Path], tmp_path: Path) -> None:
    BAD_INPUTS[case].check(env, tmp_path)


# --------------------------------------------------------------------------------------------------
# the DAG: SIGKILL and resume, determinism, --cores


def _snakemake(workdir: Path, *args: str, **popen) -> subprocess.Popen:
    # The rules call `petlprune`: find it next to this interpreter even when the venv is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(ROOT / "workflow/config/smoke.yaml"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PATH": path}, **popen,
    )


def _smoke() -> dict:
    return yaml.safe_load((ROOT / "workflow/config/smoke.yaml").read_text())


def _results_dir(workdir: Path) -> Path:
    return workdir / _smoke().get("results", "results")


# A slice of the smoke study keeps these tests to minutes (the whole DAG is test_workflow_smoke's):
# every stage up to re-training, for both tasks, with a t-SNE method, a random one, gradient ones and
# the CKA one, structured and adapter pruning. Enough that, with the warm worker's start-up saved, the slice is still running a few
# seconds after its first fine-tuned model (measured: 3 methods ended 9 s after it; these 10 about 15 s).
SLICE_METHODS = ("sls", "random", "taylor_layer", "block_influence", "angular", "last_k", "sglp", "depgraph",
                 "pear", "adapter_drop")


def _slice_targets(workdir: Path) -> list[str]:
    cfg, results = _smoke(), _results_dir(workdir).relative_to(workdir)
    petl, seed = cfg["petl"]["methods"][0], cfg["seeds"][0]
    keys = [("random.0" if m == "random" else m, cfg["budgets"][m][0]) for m in SLICE_METHODS]
    return [str(results / "runs" / task / petl / f"seed{seed}" / "pruned" / f"{key}-{budget}" / "metrics.json")
            for task in cfg["data"]["tasks"] for key, budget in keys]


def _valid(path: Path) -> bool:
    """Whether a results file reads as what its name says (JSON, checkpoint, npz, list/CSV text)."""
    import torch

    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".npz":
            with np.load(path) as data:
                [data[k] for k in data.files]
        elif path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
    except Exception:  # noqa: BLE001 - any failure to read is what this test looks for
        return False
    return True


def _outputs(results: Path) -> dict[Path, tuple[int, str]]:
    """Every result file (not logs/benchmarks, nothing under a hidden temporary name) → (inode, sha256).

    Every write of the results tree replaces the file (a new inode), so an unchanged inode and content
    means "not recomputed"; mtimes are not used: this machine's file system sets them lazily."""
    out = {}
    for p in results.rglob("*"):
        parts = p.relative_to(results).parts
        if p.is_file() and parts[0] not in ("logs", "benchmarks") and not any(x.startswith(".") for x in parts):
            out[p] = (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _untimed(obj: object) -> object:
    """``obj`` without provenance and without any key that holds a time or a memory figure."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items()
                if k not in ("provenance", "peak_memory_mb") and "seconds" not in k}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _comparable(results: Path) -> dict[str, object]:
    """Every metric, plan and score of a smoke run, timings and provenance removed."""
    out: dict[str, object] = {}
    for path in sorted((results / "runs").rglob("*.json")):
        doc = json.loads(path.read_text())
        if path.name == "efficiency.json":  # timings and memory differ by design; keep the counts
            doc = {k: doc[k] for k in ("params_forward", "params_stored", "flops_per_image")}
        out[str(path.relative_to(results))] = _untimed(doc)
    return out


@pytest.fixture(scope="session")
def killed_and_resumed(tmp_path_factory) -> dict[str, object]:
    """The smoke slice with --cores 2, SIGKILLed GRACE seconds after the first
    fine-tuned model appears (other jobs are then mid-run), checked, then resumed the documented
    way: ``snakemake --unlock --cores N`` (the killed process left its lock), then the same command with
    --rerun-incomplete (the local profile's setting).

    "Finished" outputs are those already in place GRACE seconds before the kill: Snakemake has
    registered their jobs as done by then (it sees a job end within a second; every stage of the slice
    writes its outputs in its last instants, metrics last); a file written in the last instants may belong
    to a job it had not yet seen finish, which it then rightly re-runs."""
    grace = 4.0
    work = tmp_path_factory.mktemp("killed")
    results = _results_dir(work)
    targets = _slice_targets(work)
    proc = _snakemake(work, "--cores", "2", *targets, start_new_session=True)
    deadline = time.monotonic() + 900
    while not list(results.glob("runs/*/*/seed*/finetune/metrics.json")):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no fine-tuned model within 15 minutes"
        time.sleep(0.5)
    finished = _outputs(results)
    time.sleep(grace)
    assert proc.poll() is None, "the smoke study finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started, mid-write or not
    proc.communicate()
    before = _outputs(results)
    invalid = sorted(str(p) for p in before if not _valid(p))
    # The killed Snakemake left its lock: a plain re-run refuses and says how to recover.
    locked = _snakemake(work, "--cores", "2", "--rerun-incomplete", *targets)
    locked_log = locked.communicate(timeout=600)[0]
    unlock = _snakemake(work, "--unlock", "--cores", "2", *targets)  # --cores: the measure rules read it
    unlock_log = unlock.communicate(timeout=600)[0]
    assert unlock.returncode == 0, unlock_log[-3000:]
    resumed = _snakemake(work, "--cores", "2", "--rerun-incomplete", *targets)
    log = resumed.communicate(timeout=1500)[0]
    return {"work": work, "results": results, "finished": finished, "invalid_after_kill": invalid,
            "locked_rc": locked.returncode, "locked_log": locked_log, "rc": resumed.returncode, "log": log,
            "after": _outputs(results)}


@pytest.mark.slow
def test_sigkill_then_rerun_completes_without_recomputing_finished_outputs(killed_and_resumed) -> None:
    run = killed_and_resumed
    assert run["invalid_after_kill"] == [], "a file under its final name was unreadable after SIGKILL"
    assert run["locked_rc"] != 0 and "--unlock" in run["locked_log"], run["locked_log"][-3000:]
    assert run["rc"] == 0, run["log"][-5000:]
    results: Path = run["results"]
    assert all((run["work"] / t).is_file() for t in _slice_targets(run["work"]))
    assert all(_valid(p) for p in run["after"])
    finished = run["finished"]  # at least the data, the backbone and one fine-tuned model
    assert any(p.name == "model.pt" and "finetune" in p.parts for p in finished)
    assert any(p.relative_to(results).parts[0] == "backbone" for p in finished)
    recomputed = sorted(str(p) for p in finished if run["after"].get(p) != finished[p])
    assert recomputed == [], "finished outputs were recomputed after the restart"


@pytest.mark.slow
def test_same_seed_same_metrics_with_cores_1_and_2(killed_and_resumed, tmp_path_factory) -> None:
    """A fresh --cores 1 run equals the --cores 2 run (which was also killed and resumed) exactly."""
    assert killed_and_resumed["rc"] == 0
    work = tmp_path_factory.mktemp("cores1")
    results = _results_dir(work)
    proc = _snakemake(work, "--cores", "1", *_slice_targets(work))
    log = proc.communicate(timeout=1500)[0]
    assert proc.returncode == 0, log[-5000:]
    a, b = _comparable(killed_and_resumed["results"]), _comparable(results)
    assert sorted(a) == sorted(b)
    assert any(k.endswith("metrics.json") and "pruned" in k for k in a)
    differ = [k for k in a if a[k] != b[k]]
    assert differ == [], f"results differ between the two runs: {differ[:5]}"
