"""The warm worker's client: hand one ``petlprune`` command to the worker (petlprune/worker.py), if one is
reachable.

Kept apart from the server so that ``petlprune.cli`` and ``petlprune.kernel`` import only this small
module (sockets, no stages) and the server imports them, not the other way round.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

__all__ = ["SOCKET_ENV", "delegate", "recv_exact"]

SOCKET_ENV = "PETLPRUNE_WORKER"


def delegate(argv: list[str], entry: str = "cli") -> int | None:
    """Run ``petlprune argv`` in the worker, if one is reachable; its exit status, else ``None``.

    ``entry="kernel"``: the child becomes a notebook kernel instead (:mod:`petlprune.kernel`, whose
    ipykernel ``argv`` this is).

    ``None`` (the caller runs the stage itself) when no worker is named, inside a Slurm job (the
    worker, if any, lives on the submitting host), or when the socket cannot be reached.
    """
    path = os.environ.get(SOCKET_ENV)
    if not path or os.environ.get("SLURM_JOB_ID"):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    request = json.dumps({"argv": argv, "entry": entry, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    with conn:
        socket.send_fds(conn, [struct.pack("!I", len(request)) + request], [0, 1, 2])
        pid = recv_exact(conn, 4)  # the child's pid, then its exit status
        if pid is not None and entry == "kernel":
            # Jupyter interrupts a kernel (and does so before shutting it down) with SIGINT to its
            # process, which is this one: pass it on to the kernel.
            child = struct.unpack("!i", pid)[0]
            signal.signal(signal.SIGINT, lambda signum, frame: os.kill(child, signal.SIGINT))
        reply = None if pid is None else recv_exact(conn, 4)
    if reply is None:  # the child died without answering: a signal (the OOM killer, a segfault)
        print(f"petlprune: the worker's process for `{entry} {' '.join(argv)}` died without an exit "
              f"status (killed by a signal?); rerun with --config worker=false to run it directly",
              file=sys.stderr)
        return 1
    return struct.unpack("!i", reply)[0]


def recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
