"""The smoke tier through the slurm profile on a real Slurm cluster (one node, with accounting).

Needs the cluster of ``workflow/profiles/slurm/local-cluster.sh up`` (root, Debian/Ubuntu; ``.ci/run``
brings it up before the suite). The test never installs packages or starts daemons itself: without
that cluster it skips and says why. One module-scoped run does the work, the tests read it:

* a copy of smoke.yaml (one task, its own results dir, per-rule ``resources:`` so that CPUs and
  memory differ between rules and from Slurm's defaults) runs with ``--profile workflow/profiles/slurm``;
* the profile packs a run's GPU jobs into job groups (``score``: features + scores; ``retrain``: prunes +
  measure; ``group-components`` several runs per submission): the submissions are those of the dry
  run's group jobs plus its ungrouped non-local jobs, fewer than one per job (book/cost.md);
* mid-run, a running ``retrain`` group job is cancelled with ``scancel``: the profile's ``retries: 1``
  must resubmit it, and every output finished before the cancel outside pruned models (a retried group
  runs all its members again: Snakemake forces a group's jobs on the node) must stay untouched;
* the same config runs locally (``--cores 2``, up to the measured models) for a job-by-job comparison.

Polling is shortened (the plugin's ``--slurm-init-seconds-before-status-checks``, Snakemake's
``--seconds-between-status-checks``) and both runs are niced; the cluster propagates the nice value.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "workflow/profiles/slurm/local-cluster.sh"
PROFILE = ROOT / "workflow/profiles/slurm"
CLUSTER = os.environ.get("PETLPRUNE_SLURM_CLUSTER", "petlprune")  # as local-cluster.sh names it
RESULTS = "results-slurm-test"
POLL = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]
# The node's CPUs: bounds a packed group's threads (the smoke tier asks for no GPU, the profile's
# per-submission limit), and the run's threads at once on this one-node cluster.
CORES = ["--cores", "2"]
GROUPS = ("score", "retrain")  # the `group:` names of workflow/rules/prune.smk and measure.smk
TIMEOUT = 3600

# CPUs and memory per rule family, unlike each other and unlike Slurm's defaults (1 CPU, no --mem).
RESOURCES = {
    "default": {"threads": 1, "mem_mb": 1500, "runtime": 20},
    "pretrain": {"threads": 2, "mem_mb": 2500, "runtime": 25},
    "finetune": {"threads": 1, "mem_mb": 3000},
    "measure": {"threads": 2, "mem_mb": 2000},
}
# Numbers that depend on the machine and its load, not on the computation (and any key with "seconds").
MACHINE_KEYS = {"provenance", "throughput", "peak_memory_mb"}

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def _cluster_or_skip() -> None:
    """Skip, saying why, unless local-cluster.sh's cluster answers sbatch and sacct."""
    if shutil.which("sbatch") is None:
        if os.geteuid() != 0:
            pytest.skip("no Slurm here (no sbatch), and local-cluster.sh cannot bring it up: not root")
        if shutil.which("apt-get") is None:
            pytest.skip("no Slurm here (no sbatch), and local-cluster.sh cannot install it: no apt-get")
        pytest.skip("no Slurm here (no sbatch): run `workflow/profiles/slurm/local-cluster.sh up` first")
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        pytest.skip(f"the local Slurm cluster is not up (run local-cluster.sh up): {status.stdout.strip()}")
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    if not re.search(rf"^ClusterName\s*=\s*{re.escape(CLUSTER)}\s*$", config, flags=re.M):
        pytest.skip(f"the Slurm cluster here is not local-cluster.sh's ({CLUSTER}): not submitting to it")


def _workdir(path: Path) -> Path:
    """A scratch copy of what the workflow reads besides the package, with the test's config."""
    path.mkdir(parents=True)
    shutil.copytree(ROOT / "notebooks", path / "notebooks")
    shutil.copytree(ROOT / "book", path / "book", ignore=shutil.ignore_patterns("_build", "generated"))
    cfg = yaml.safe_load((ROOT / "workflow/config/smoke.yaml").read_text())
    cfg["results"] = RESULTS
    cfg["data"]["tasks"] = cfg["data"]["tasks"][:1]  # one task: every method once, half the jobs
    cfg["resources"] = RESOURCES
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _snakemake(workdir: Path, *args: str) -> list[str]:
    return ["nice", "-n", "10", sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *args]


def _sacct(run_id: str) -> list[dict]:
    """One row per Slurm job of a Snakemake run (its jobs are named by the run's ID)."""
    fields = ["JobID", "State", "Comment", "ReqCPUS", "ReqMem", "Timelimit"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--name", run_id, "-S", "now-1days", "-o", ",".join(fields)],
        capture_output=True, text=True, check=True,
    ).stdout
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]


def _local_rules() -> set[str]:
    """The Snakefile's `localrules:` (they run where Snakemake runs, never through sbatch)."""
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", (ROOT / "Snakefile").read_text(), flags=re.M)
    assert block, "no localrules: block in the Snakefile"
    return set(re.findall(r"\w+", block.group(1)))


def _rule(comment: str) -> str:
    """The plugin's --comment: rule_<rule>_wildcards_<values> (sacct shows it: job_comment); a group job's
    is rule_<group>_<its rules, sorted>[_wildcards_...], returned as ``group:<group>``."""
    assert comment.startswith("rule_"), f"not a Snakemake job comment: {comment!r}"
    name = comment[len("rule_"):].split("_wildcards_")[0]
    for group in GROUPS:
        if name.startswith(group + "_"):
            return f"group:{group}"
    return name


def _submissions(dry_run: str, local_rules: set[str]) -> tuple[collections.Counter, collections.Counter]:
    """(sbatch submissions the run must make: ungrouped non-local jobs by rule and group jobs as
    ``group:<name>``; the grouped jobs by rule) from a dry run with the profile."""
    ungrouped = collections.Counter(r for r in re.findall(r"^(?:local)?rule (\w+):$", dry_run, flags=re.M)
                                    if r not in local_rules)
    groups = collections.Counter(f"group:{g}" for g in re.findall(r"Group job (\w+) \(jobs", dry_run))
    members = collections.Counter(re.findall(r"^\s+rule (\w+):$", dry_run, flags=re.M))
    return ungrouped + groups, members


def _incomplete(workdir: Path) -> set[str]:
    """Outputs Snakemake still marks incomplete (jobs running or not yet noticed as finished)."""
    marks = workdir / ".snakemake/incomplete"
    paths = set()
    for f in marks.rglob("*"):
        if f.is_file() and f.name != "migration_underway":
            parts = [p.removeprefix("@") for p in f.relative_to(marks).parts]
            paths.add(base64.urlsafe_b64decode("".join(parts)).decode())
    return paths


def _finished(workdir: Path) -> dict[str, tuple[int, int, str]]:
    """(inode, mtime_ns, sha256) of every finished output under the results dir."""
    busy = _incomplete(workdir)
    out = {}
    for f in sorted((workdir / RESULTS).rglob("*")):
        rel = str(f.relative_to(workdir))
        if f.is_file() and rel.split("/")[1] not in ("logs", "benchmarks") and rel not in busy:
            st = f.stat()
            out[rel] = (st.st_ino, st.st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
    return out


def _wait_for_run_id(log: Path, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"SLURM run ID: (\S+)", log.read_text())
        if found:
            return found.group(1)
        time.sleep(1)
    raise AssertionError(f"no SLURM run ID in the snakemake log:\n{log.read_text()[-3000:]}")


def _cancel_a_running_group(workdir: Path, run_id: str, proc: subprocess.Popen) -> dict:
    """scancel the first ``retrain`` group job seen running; the finished outputs at that moment."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        # squeue, not sacct: the accounting database gets a job's comment only when the job ends
        queue = subprocess.run(["squeue", "-h", "--name", run_id, "-t", "RUNNING", "-o", "%i|%k"],
                               capture_output=True, text=True, check=True).stdout
        running = [dict(zip(("JobID", "Comment"), line.split("|", 1), strict=True))
                   for line in queue.splitlines() if line]
        running = [j for j in running if _rule(j["Comment"]) == "group:retrain"]
        if running:
            time.sleep(3)  # well inside the job: its Snakemake has started the command
            finished = _finished(workdir)
            subprocess.run(["scancel", running[0]["JobID"]], check=True)
            return {"job": running[0], "finished": finished}
        time.sleep(1)
    raise AssertionError("the run ended before a retrain group job was seen running")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    _cluster_or_skip()
    base = tmp_path_factory.mktemp("slurm")
    slurm_dir, local_dir = _workdir(base / "slurm"), _workdir(base / "local")
    t0 = time.perf_counter()

    # The jobs the run must submit: every job of the dry run but those of the Snakefile's localrules.
    dry = subprocess.run(_snakemake(slurm_dir, "-n", "--profile", str(PROFILE), *CORES),
                         capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]
    text = dry.stdout + dry.stderr
    local_rules = _local_rules()
    # every local rule of this tier's DAG (friedman is in it only with 5+ tasks: not in smoke)
    assert {"book", "plan", "aggregates"} <= local_rules & set(re.findall(r"^(?:local)?rule (\w+):$", text, flags=re.M))
    expected, members = _submissions(text, local_rules)
    assert expected["finetune"] >= 1 and members["prune"] >= 2 and members["features"] >= 1
    # packed: fewer retrain submissions than prune jobs, and fewer submissions than non-local jobs
    assert 1 <= expected["group:retrain"] < members["prune"]
    before = sum(expected[r] for r in expected if not r.startswith("group:")) + sum(members.values())
    assert sum(expected.values()) < before

    # The local reference, up to the measured models (not the notebooks), alongside the cluster run.
    local_log = base / "local.log"
    with local_log.open("w") as out:
        local = subprocess.Popen(
            _snakemake(local_dir, "--cores", "2", "--omit-from", "result_notebook", "task_notebook",
                       "summary", "rulegraph", "gallery", "probe"),
            stdout=out, stderr=subprocess.STDOUT, text=True)
    slurm_log = base / "slurm.log"
    with slurm_log.open("w") as out:
        slurm = subprocess.Popen(_snakemake(slurm_dir, "--profile", str(PROFILE), *CORES, *POLL),
                                 stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        run_id = _wait_for_run_id(slurm_log, slurm)
        cancel = _cancel_a_running_group(slurm_dir, run_id, slurm)
        slurm_rc = slurm.wait(timeout=TIMEOUT)
        local_rc = local.wait(timeout=TIMEOUT)
    finally:
        for proc in (slurm, local):
            if proc.poll() is None:
                proc.terminate()
    seconds = time.perf_counter() - t0
    assert local_rc == 0, local_log.read_text()[-5000:]
    assert slurm_rc == 0, slurm_log.read_text()[-5000:]
    jobs = _sacct(run_id)
    for job in jobs:  # a cancelled job's record may lack its comment: the one squeue showed
        if job["JobID"] == cancel["job"]["JobID"] and not job["Comment"]:
            job["Comment"] = cancel["job"]["Comment"]
    print(f"slurm test: {len(jobs)} sbatch jobs ({before} without job groups), both runs {seconds:.0f}s")
    return {"slurm": slurm_dir, "local": local_dir, "expected": expected, "jobs": jobs, "cancel": cancel,
            "log": slurm_log.read_text()}


def test_every_non_local_job_ran_through_sbatch_once(runs):
    completed = [j for j in runs["jobs"] if j["State"] == "COMPLETED"]
    # a group job's comment need not name its runs (merged wildcards), so only single jobs must differ
    comments = collections.Counter(j["Comment"] for j in completed if not _rule(j["Comment"]).startswith("group:"))
    assert max(comments.values()) == 1, f"a rule instance completed twice: {comments.most_common(3)}"
    assert collections.Counter(_rule(j["Comment"]) for j in completed) == runs["expected"]
    others = [j for j in runs["jobs"] if j["State"] != "COMPLETED"]
    assert [j["JobID"] for j in others] == [runs["cancel"]["job"]["JobID"]], f"not COMPLETED: {others}"


def test_each_job_asked_slurm_for_its_rules_resources(runs):
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())["default-resources"]
    for job in runs["jobs"]:
        rule = _rule(job["Comment"])
        if rule.startswith("group:"):  # members one after another or side by side, within the node's CPUs
            assert 1 <= int(job["ReqCPUS"]) <= int(CORES[1]), f"{job['Comment']}: {job['ReqCPUS']} CPUs"
            continue
        family = "measure" if rule.startswith("measure_") else rule
        res = {**profile, **RESOURCES["default"], **RESOURCES.get(family, {})}
        got = (int(job["ReqCPUS"]), job["ReqMem"], job["Timelimit"])
        want = (res["threads"], f"{res['mem_mb']}M", f"00:{res['runtime']:02d}:00")
        assert got == want, f"{job['Comment']}: sbatch got (cpus, mem, time) {got}, the config sets {want}"


def _comparable(obj):
    """A result with its timing, memory and provenance left out (they depend on the machine)."""
    if isinstance(obj, dict):
        return {k: _comparable(v) for k, v in obj.items() if k not in MACHINE_KEYS and "seconds" not in k}
    if isinstance(obj, list):
        return [_comparable(v) for v in obj]
    return obj


def test_metrics_equal_those_of_a_local_run_job_by_job(runs):
    import numpy as np

    def results(workdir: Path) -> dict[str, Path]:
        base = workdir / RESULTS
        files = [*base.glob("runs/**/*.json"), *base.glob("runs/**/*.npz"), *base.glob("data/*/meta.json")]
        return {str(p.relative_to(base)): p for p in files}

    cluster, local = results(runs["slurm"]), results(runs["local"])
    assert sorted(cluster) == sorted(local)
    assert sum(k.endswith("/metrics.json") for k in cluster) >= 10
    for key in sorted(cluster):
        if key.endswith(".json"):
            a, b = (_comparable(json.loads(d[key].read_text())) for d in (cluster, local))
            assert a == b, f"{key} differs between the slurm and the local run"
        else:
            with np.load(cluster[key]) as a, np.load(local[key]) as b:
                assert sorted(a.files) == sorted(b.files), key
                for name in (n for n in a.files if "seconds" not in n):  # features.npz: extraction time
                    assert np.array_equal(a[name], b[name]), f"{key}:{name} differs between the runs"


def test_a_cancelled_job_is_retried_and_nothing_finished_is_recomputed(runs):
    victim = runs["cancel"]["job"]
    states = collections.Counter(j["State"].split()[0] for j in runs["jobs"] if j["Comment"] == victim["Comment"])
    # sacct writes "CANCELLED by <uid>"; the retry (attempt 2) carries the same comment
    assert states["CANCELLED"] == 1 and states["COMPLETED"] >= 1, states
    finished = runs["cancel"]["finished"]
    # non-vacuous: data, backbone and fine-tunings had finished when the retrain group was cancelled
    assert any("/backbone/" in k for k in finished) and any("/finetune/" in k for k in finished)
    now = _finished(runs["slurm"])
    # a retried group runs its members again (pruned models, efficiency): everything else stays
    changed = [k for k, v in finished.items() if now.get(k) != v and "/pruned/" not in k
               and not k.endswith("/efficiency.json")]
    assert not changed, f"finished outputs rewritten or removed after the cancel: {changed[:5]}"


def test_the_book_is_built(runs):
    html = runs["slurm"] / "book/_build/html"
    assert (html / "index.html").is_file()
    assert any(html.rglob("summary.html")), "no summary page in the book"
