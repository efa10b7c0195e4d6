"""An IPython kernel for the report notebooks that forks from the warm worker when one runs.

A result notebook does about half a second of work, but its kernel first starts a Python, imports
ipykernel, and then the notebook imports ``petlprune.report`` (pandas, matplotlib, scipy.stats):
about 2.5 s of CPU on this machine, for each of the default tier's 56 notebooks. When the workflow's
warm worker (:mod:`petlprune.worker`) runs, it has imported all of that once; the kernelspec
:data:`KERNEL_NAME` (written by :func:`write_kernelspec`, used by the notebook rules through
papermill's ``-k``) starts this module, which asks the worker to fork a child that becomes the kernel.

What stays as it was: each notebook still gets its own, fresh kernel process, runs the same cells and
writes the same outputs. Without a reachable worker this module simply is the kernel
(``ipykernel_launcher`` does the same). Users who re-run a notebook with papermill get the usual
``python3`` kernel: :data:`KERNEL_NAME` exists only while a workflow runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from petlprune.delegate import delegate

__all__ = ["KERNEL_NAME", "KERNEL_ENV", "PRELOAD", "write_kernelspec", "launch", "main"]

KERNEL_NAME = "petlprune-warm"
KERNEL_ENV = "PETLPRUNE_KERNEL"  # set to KERNEL_NAME while a worker runs; the notebook rules read it
# What a report notebook's kernel imports before its first cell ends (the worker imports these too).
PRELOAD = (
    "IPython", "ipykernel.kernelapp", "ipykernel.ipkernel", "matplotlib_inline.backend_inline",
    "matplotlib.pyplot", "pandas", "scipy.stats", "petlprune.report",
)


def write_kernelspec(folder: str | Path) -> Path:
    """Write the kernelspec of :data:`KERNEL_NAME` under ``folder/kernels/``; return ``folder``, a
    directory to put on ``JUPYTER_PATH``."""
    spec_dir = Path(folder) / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "petlprune.kernel", "-f", "{connection_file}"],
        "display_name": "Python 3 (petlprune warm worker)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return Path(folder)


def launch(argv: list[str]) -> None:
    """Run an IPython kernel in this process (``argv``: ipykernel's, e.g. ``["-f", CONNECTION_FILE]``)."""
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(argv=argv)


def main(argv: list[str] | None = None) -> int:
    """Be a kernel: forked from the worker if it can be reached, else in this process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    code = delegate(argv, entry="kernel")
    if code is not None:
        return code
    launch(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
