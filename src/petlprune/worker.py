"""A warm worker for local runs: torch, timm and the stages imported once, one forked child per job.

Every torch job of the study starts a Python that imports torch, timm, sklearn and our stages before
doing a second of work: about 3.3 s on this machine, in each of about 180 jobs of the default tier.
When Snakemake executes locally, the workflow's ``onstart`` starts :func:`serve` once. Each
``petlprune <stage>`` the rules call is then a thin client (:func:`petlprune.delegate.delegate`, a
module of its own so that the CLI never imports this server): it hands its
arguments, working directory, environment and its stdin/stdout/stderr (the job's log) to the worker
over a Unix socket; the worker forks, and the child runs :func:`petlprune.cli.main` exactly as the
process would have, with the job's thread limits. The client exits with the child's exit status.

What stays as it was: each job is its own process (a crash or a leak ends with it), the same code,
seeds and threads; a client killed by Snakemake takes its child with it. What differs: Snakemake's
benchmark files time the client, so their wall seconds are the job's, but their CPU and memory
figures are the client's. The child therefore ends its log with one line of its own figures
(:data:`RESOURCE_PREFIX`), which ``benchmarks/stage_costs.py`` reads in their place.

No worker runs for cluster execution (each job is a cluster job) or with ``--config worker=false``;
without a worker, or if it cannot be reached, the client runs the stage itself.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from petlprune import kernel
from petlprune.delegate import SOCKET_ENV, delegate, recv_exact

__all__ = ["SOCKET_ENV", "RESOURCE_PREFIX", "PRELOAD", "delegate", "serve", "start", "stop", "job_resources"]

RESOURCE_PREFIX = "petlprune worker: job resources "
# What the stages import at run time (each stage module imports its heavy modules lazily). torch.optim
# pulls in torch._dynamo at AdamW's construction; importing it here moves that cost too.
PRELOAD = (
    "numpy", "scipy.stats", "torch", "torch._dynamo", "torch.optim", "torch.utils.flop_counter",
    "timm", "timm.models.vision_transformer", "sklearn.linear_model", "sklearn.metrics",
    "sklearn.manifold", "openTSNE", "torch_pruning", "safetensors.torch", "PIL.Image",
    "petlprune.models", "petlprune.methods", "petlprune.train", "petlprune.measure",
    "petlprune.analysis.features", "petlprune.analysis.cka", "petlprune.analysis.cluster",
    "petlprune.analysis.tsne", "petlprune.data", "petlprune.cli",
    *(f"petlprune.stages.{s}" for s in ("data", "finetune", "features", "score", "plan", "prune", "measure")),
    *kernel.PRELOAD,  # the report notebooks' kernels fork from here too
    "papermill.cli", "petlprune.stages.notebook",
)
_MAX_REQUEST = 1 << 22


# ---------------------------------------------------------------------------------------- server
def serve(path: str, parent: int, preload: tuple[str, ...] = PRELOAD) -> None:
    """Import ``preload``, then fork one child per connection on the Unix socket ``path``.

    Exits when process ``parent`` (Snakemake) is gone. The socket appears only once the imports are
    done, so a client that comes earlier runs its stage itself instead of waiting.
    """
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as err:  # the child imports it again and reports the error in its job's log
            print(f"worker: could not preload {name}: {err!r}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves: they report to the client
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    server.bind(staging)
    server.listen(128)
    os.replace(staging, path)
    server.settimeout(1.0)
    print(f"worker: ready on {path} (pid {os.getpid()}, parent {parent})", file=sys.stderr, flush=True)
    while os.getppid() == parent and os.path.exists(path):  # stop() removes the socket
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        if os.fork() == 0:
            server.close()
            _child(conn)  # never returns
        conn.close()
    print("worker: parent gone or socket removed, exiting", file=sys.stderr, flush=True)


def _child(conn: socket.socket) -> None:
    code = 1
    try:
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        conn.settimeout(None)
        header, fds, _, _ = socket.recv_fds(conn, 4, 3)
        (size,) = struct.unpack("!I", header)
        if not 0 < size <= _MAX_REQUEST:
            raise ValueError(f"bad request size {size}")
        body = recv_exact(conn, size)
        if body is None:
            raise ConnectionError("client closed the connection")
        request = json.loads(body)
        conn.sendall(struct.pack("!i", os.getpid()))
        if len(fds) != 3:
            raise ValueError(f"expected the client's stdin, stdout and stderr, got {len(fds)} descriptors")
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        entry = request.get("entry", "cli")
        sys.argv = ["petlprune" if entry == "cli" else f"petlprune.{entry}", *request["argv"]]
        # A client killed by Snakemake (a cancelled run) closes the socket: end the job with it.
        threading.Thread(target=_exit_when_closed, args=(conn,), daemon=True).start()
        code = _ENTRIES[entry](request["argv"])
    except BaseException:  # noqa: BLE001 - the job's log is the only place left to say it
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        try:
            conn.sendall(struct.pack("!i", code))
        except OSError:
            pass
        os._exit(code)


def _run(argv: list[str]) -> int:
    import atexit
    import resource

    from petlprune import cli

    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, int) and exit_.code is not None:
            print(exit_.code, file=sys.stderr)
    atexit._run_exitfuncs()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = {"cpu_time": round(usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime, 2),
               "max_rss": round(max(usage.ru_maxrss, children.ru_maxrss) / 1024, 2)}  # kB -> MB
    print(RESOURCE_PREFIX + json.dumps(figures), file=sys.stderr)
    return int(code or 0)


def _kernel(argv: list[str]) -> int:
    kernel.launch(argv)
    return 0


_ENTRIES = {"cli": _run, "kernel": _kernel}


def job_resources(log: str | Path) -> dict[str, float] | None:
    """The ``{"cpu_time", "max_rss"}`` (s, MB) a worker's child wrote at the end of job log ``log``;
    ``None`` for a job that ran on its own (or a missing log)."""
    try:
        tail = Path(log).read_bytes()[-4096:].decode(errors="replace")
    except OSError:
        return None
    lines = [ln for ln in tail.splitlines() if ln.startswith(RESOURCE_PREFIX)]
    return json.loads(lines[-1][len(RESOURCE_PREFIX):]) if lines else None


def _exit_when_closed(conn: socket.socket) -> None:
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    os._exit(143)


# ------------------------------------------------------------------------------- workflow hooks
def start(log: str | Path, parent: int | None = None) -> str:
    """Start a worker for Snakemake process ``parent`` (default: this one); return its socket path.

    Also sets :data:`SOCKET_ENV` in this process's environment, which every shell job inherits, and
    makes the notebook kernel :data:`petlprune.kernel.KERNEL_NAME` known to Jupyter there
    (``JUPYTER_PATH``, and :data:`petlprune.kernel.KERNEL_ENV` for the notebook rules).
    """
    folder = tempfile.mkdtemp(prefix="petlprune-worker-")
    jupyter = str(kernel.write_kernelspec(os.path.join(folder, "jupyter")))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (jupyter, os.environ.get("JUPYTER_PATH")) if p)
    os.environ[kernel.KERNEL_ENV] = kernel.KERNEL_NAME
    path = os.path.join(folder, "socket")
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        subprocess.Popen([sys.executable, "-m", "petlprune.worker", path, str(parent or os.getpid())],
                         stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True)
    os.environ[SOCKET_ENV] = path
    return path


def stop() -> None:
    """Remove this process's worker socket and kernelspec; the worker exits within a second of its parent."""
    import shutil

    path = os.environ.pop(SOCKET_ENV, None)
    os.environ.pop(kernel.KERNEL_ENV, None)
    if path:
        folder = os.path.dirname(path)
        jupyter = os.path.join(folder, "jupyter")
        rest = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != jupyter]
        if rest:
            os.environ["JUPYTER_PATH"] = os.pathsep.join(rest)
        else:
            os.environ.pop("JUPYTER_PATH", None)
        try:
            os.unlink(path)
        except OSError:
            pass
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":  # python -m petlprune.worker SOCKET PARENT_PID [MODULE ...] (default: PRELOAD)
    serve(sys.argv[1], int(sys.argv[2]), tuple(sys.argv[3:]) or PRELOAD)
