"""``petlprune <stage> ...``: the only entry the Snakemake rules call.

Each stage lives in ``petlprune/stages/<stage>.py`` with ``add_arguments(parser)`` and ``run(args)``;
stages are imported lazily so that ``petlprune data`` does not pay for importing torch models.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from petlprune.delegate import delegate

__all__ = ["STAGES", "main"]

# stage name -> one-line help. Adding a stage: a module in petlprune/stages/ and a line here.
STAGES: dict[str, str] = {
    "data": "generate one embedded task (or check a VTAB-1k folder) in the VTAB-1k layout",
    "source": "generate the fractal source data used to pretrain the embedded backbone",
    "gallery": "draw a gallery of samples per task",
    "probe": "logistic-regression probe on raw pixels (how hard is each task?)",
    "pretrain": "pretrain (or fetch) the backbone and cache it",
    "bundle": "write a pretrained backbone as the package's asset (safetensors, sha256, provenance)",
    "finetune": "PETL fine-tuning of one task",
    "measure": "parameters, FLOPs, throughput and latency of trained models",
    "features": "per-block CLS features of a fine-tuned model, in one forward pass",
    "score": "score blocks / adapters / channels with one method",
    "plan": "turn scores and a budget into a pruning Plan",
    "prune": "apply a Plan, evaluate, re-train, evaluate",
    "summary": "collect every result into results/summary.csv",
    "aggregates": "aggregates across tasks x seeds (rliable) or the Friedman test + CD diagrams (autorank)",
    "notebook": "execute a report notebook with papermill (its own command line), in the warm worker if one runs",
    "book": "assemble the jupyter-book's generated pages from the results tree",
    "cost": "expected GPU-hours and wall time of a config's DAG on N GPUs (dry run + measured job costs)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petlprune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, help_text in STAGES.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


# The thread pools of native libraries a stage may load: OpenBLAS / MKL (numpy, scipy, sklearn's
# silhouette and pairwise distances), OpenMP (torch's CPU kernels besides its own setting, openTSNE).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_native_threads(threads: int) -> None:
    """Hold every native thread pool to the job's ``--threads``, not the machine's core count.

    A job is given ``threads`` cores by Snakemake; numpy's OpenBLAS otherwise starts one thread per
    core and, beside the other jobs, contends with them (measured here: an SLS score and a re-training
    job side by side on 2 cores ran 8% faster with the limit). Set before any stage imports numpy; for
    pools already loaded (a caller that imported numpy), threadpoolctl applies the same limit.
    """
    import os

    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console command: a local run's warm worker runs it, if there is one
        code = delegate(sys.argv[1:])
        if code is not None:
            return code
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in STAGES:
        parser.parse_args(argv)  # prints usage / the unknown-stage error and exits
        return 2
    stage = argv[0]
    module = importlib.import_module(f"petlprune.stages.{stage}")
    stage_parser = argparse.ArgumentParser(prog=f"petlprune {stage}", description=STAGES[stage])
    module.add_arguments(stage_parser)
    args = stage_parser.parse_args(argv[1:])
    args.argv = ["petlprune", *argv]
    if getattr(args, "threads", None) is not None:
        limit_native_threads(args.threads)
    if getattr(args, "out", None) is not None:
        from petlprune.io import check_writable

        check_writable(args.out)  # before the work, not after it
    try:
        module.run(args)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
