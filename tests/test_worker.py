"""The warm worker (petlprune/worker.py): a job run through it is the job run directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from petlprune import worker
from petlprune.methods import Scores


def petlprune(args: list[str], cwd: Path, socket_path: str | None, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in (worker.SOCKET_ENV, "SLURM_JOB_ID")}
    environ.update(env)
    if socket_path:
        environ[worker.SOCKET_ENV] = socket_path
    return subprocess.run([sys.executable, "-c", "from petlprune.cli import main; raise SystemExit(main())", *args],
                          cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)


def plan_args(scores: Path, out: str) -> list[str]:
    return ["plan", "--method", "block_influence", "--scores", str(scores), "--budget", "d3", "--out", out]


def write_scores(tmp_path: Path) -> Path:
    path = tmp_path / "scores.json"
    Scores("block_influence", [0.5, 0.1, 0.9, 0.3, 0.7, 0.2]).save(path)
    return path


def test_a_job_through_the_worker_writes_what_the_job_run_directly_writes(tmp_path: Path, server) -> None:
    socket_path, _ = server
    scores = write_scores(tmp_path)
    direct = petlprune(plan_args(scores, "direct.json"), tmp_path, None)
    warm = petlprune(plan_args(scores, "warm.json"), tmp_path, socket_path)
    assert direct.returncode == 0 and warm.returncode == 0, direct.stderr + warm.stderr
    # a relative --out lands in the client's working directory: the child took its cwd
    plan_direct, plan_warm = (json.loads((tmp_path / n).read_text()) for n in ("direct.json", "warm.json"))
    assert plan_warm == plan_direct and plan_warm["kept_blocks"] == [0, 2, 4]
    assert "keep 3 blocks [0, 2, 4]" in warm.stdout  # the job's stdout came back through the passed fd
    # only the worker's child reports its own resources (Snakemake's benchmark sees the client)
    line = next(ln for ln in warm.stderr.splitlines() if ln.startswith(worker.RESOURCE_PREFIX))
    figures = json.loads(line[len(worker.RESOURCE_PREFIX):])
    assert figures["cpu_time"] >= 0 and figures["max_rss"] > 10
    assert worker.RESOURCE_PREFIX not in direct.stderr


def test_a_failing_job_returns_its_exit_status_and_message(tmp_path: Path, server) -> None:
    socket_path, _ = server
    scores = write_scores(tmp_path)
    bad_budget = petlprune(plan_args(scores, "x.json")[:-3] + ["q7", "--out", "x.json"], tmp_path, socket_path)
    assert bad_budget.returncode == 1 and "petlprune plan: --budget" in bad_budget.stderr
    unknown_stage = petlprune(["nosuchstage"], tmp_path, socket_path)
    assert unknown_stage.returncode == 2 and "invalid choice: 'nosuchstage'" in unknown_stage.stderr
    assert not (tmp_path / "x.json").exists()


def test_without_a_reachable_worker_the_client_runs_the_stage_itself(tmp_path: Path, server,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    socket_path, _ = server
    monkeypatch.delenv(worker.SOCKET_ENV, raising=False)
    assert worker.delegate(["plan"]) is None
    monkeypatch.setenv(worker.SOCKET_ENV, str(tmp_path / "absent"))
    assert worker.delegate(["plan"]) is None
    monkeypatch.setenv(worker.SOCKET_ENV, socket_path)
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # a cluster job: the worker (if any) is on another host
    assert worker.delegate(["plan"]) is None
    scores = write_scores(tmp_path)
    run = petlprune(plan_args(scores, "s.json"), tmp_path, socket_path, SLURM_JOB_ID="42")
    assert run.returncode == 0 and worker.RESOURCE_PREFIX not in run.stderr


def test_the_worker_exits_once_its_socket_is_removed(server) -> None:
    socket_path, proc = server
    os.unlink(socket_path)
    assert proc.wait(timeout=5) == 0
    assert "socket removed" in proc.stderr.read()
