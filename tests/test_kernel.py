"""Notebooks run by the warm worker (petlprune/kernel.py, stages/notebook.py): a forked kernel gives the
notebook a plain kernel gives, it can be interrupted, and papermill's arguments pass through unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from petlprune import kernel, worker
from petlprune.stages.notebook import papermill_argv


@pytest.fixture
def warm(tmp_path: Path, server):
    """A worker and an environment that announces it and its kernel, as worker.start does."""
    path, proc = server
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "JUPYTER_PATH")}
    env.update({worker.SOCKET_ENV: path, kernel.KERNEL_ENV: kernel.KERNEL_NAME,
                "JUPYTER_PATH": str(kernel.write_kernelspec(tmp_path / "jupyter"))})
    return env, proc


def write_notebook(path: Path) -> Path:
    """A parameterised notebook whose output shows which process ran it and what it computed."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n = 3")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import os\nprint(sum(range(n)))"),
                nbformat.v4.new_code_cell("import json\nprint(json.dumps({'ppid': os.getppid()}))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def run_notebook(src: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from petlprune.cli import main; raise SystemExit(main())",
                           "notebook", str(src), str(out), "-p", "n", "10"],
                          env=env, capture_output=True, text=True, timeout=180)


def outputs(path: Path) -> list[str]:
    return [o.get("text", "") for c in nbformat.read(path, as_version=4).cells for o in c.get("outputs", [])]


def test_a_kernel_forked_from_the_worker_writes_the_notebook_a_plain_kernel_writes(tmp_path: Path, warm) -> None:
    env, proc = warm
    src = write_notebook(tmp_path / "in.ipynb")
    cold_env = {k: v for k, v in env.items() if k not in (worker.SOCKET_ENV, kernel.KERNEL_ENV)}
    cold = run_notebook(src, tmp_path / "cold.ipynb", cold_env)
    hot = run_notebook(src, tmp_path / "warm.ipynb", env)
    assert cold.returncode == 0 and hot.returncode == 0, cold.stderr + hot.stderr
    assert f"kernel: {kernel.KERNEL_NAME}" in hot.stderr and "kernel: python3" in cold.stderr
    (cold_sum, cold_ppid), (warm_sum, warm_ppid) = outputs(tmp_path / "cold.ipynb"), outputs(tmp_path / "warm.ipynb")
    assert cold_sum == warm_sum == "45\n"  # the parameter reached the cell; the same computation
    assert json.loads(warm_ppid)["ppid"] == proc.pid  # the kernel really was the worker's child
    assert json.loads(cold_ppid)["ppid"] != proc.pid
    # The output names the notebook's own kernel, so a user's papermill re-run needs no worker.
    assert nbformat.read(tmp_path / "warm.ipynb", as_version=4).metadata.kernelspec.name == "python3"


def test_a_forked_kernel_passes_on_an_interrupt(tmp_path: Path, warm, monkeypatch) -> None:
    from jupyter_client.manager import start_new_kernel

    env, _ = warm
    for name, value in env.items():  # the kernel manager starts the kernelspec's command with these
        monkeypatch.setenv(name, value)
    km, kc = start_new_kernel(kernel_name=kernel.KERNEL_NAME, startup_timeout=60)
    try:
        msg_id = kc.execute("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('interrupted')")
        time.sleep(1.0)
        start = time.monotonic()
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=20)
        assert reply["parent_header"]["msg_id"] == msg_id and time.monotonic() - start < 20
        texts = []
        while True:
            msg = kc.get_iopub_msg(timeout=10)
            if msg["msg_type"] == "stream":
                texts.append(msg["content"]["text"])
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert "interrupted\n" in "".join(texts)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert not km.is_alive()


def test_papermill_arguments_pass_through_with_the_announced_kernel() -> None:
    args = ["in.ipynb", "out.ipynb", "-p", "task", "digits"]
    assert papermill_argv(args, {}) == ["--no-progress-bar", *args]
    assert papermill_argv(args, {kernel.KERNEL_ENV: "k1"}) == ["--no-progress-bar", "-k", "k1", *args]
    # a kernel the caller names wins over the worker's
    assert papermill_argv([*args, "-k", "other"], {kernel.KERNEL_ENV: "k1"}) == ["--no-progress-bar", *args, "-k", "other"]


def test_start_announces_the_kernel_and_stop_takes_it_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: None)  # no worker process: only the announcements
    path = worker.start(tmp_path / "worker.log", parent=os.getpid())
    try:
        spec = Path(os.environ["JUPYTER_PATH"]) / "kernels" / kernel.KERNEL_NAME / "kernel.json"
        argv = json.loads(spec.read_text())["argv"]
        assert argv[1:3] == ["-m", "petlprune.kernel"] and "{connection_file}" in argv
        assert os.environ[kernel.KERNEL_ENV] == kernel.KERNEL_NAME
    finally:
        worker.stop()
    assert kernel.KERNEL_ENV not in os.environ and "JUPYTER_PATH" not in os.environ
    assert not os.path.exists(os.path.dirname(path))
