"""``petlprune notebook TEMPLATE OUTPUT -p NAME VALUE ...``: papermill's own command line, run by the
warm worker when one runs.

The report rules execute every notebook through here instead of the ``papermill`` command: the same
click command (:func:`papermill.cli.papermill`), with the same arguments, but already imported, and
with the kernel that forks from the worker (:mod:`petlprune.kernel`) while one runs. Re-running a
notebook by hand is the plain papermill call the book gives, with the same arguments.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["add_arguments", "run", "papermill_argv"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("papermill_args", nargs=argparse.REMAINDER, metavar="PAPERMILL_ARGS",
                        help="papermill's arguments: TEMPLATE OUTPUT [-p NAME VALUE ...] (see papermill --help)")


def papermill_argv(args: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """papermill's argv for ``args``: no progress bar, and the worker's kernel if one is announced
    (:data:`petlprune.kernel.KERNEL_ENV`) and ``args`` name no kernel of their own."""
    from petlprune.kernel import KERNEL_ENV

    environ = os.environ if environ is None else environ
    argv = ["--no-progress-bar", *args]
    named = any(a in ("-k", "--kernel") or a.startswith("--kernel=") for a in args)
    if environ.get(KERNEL_ENV) and not named:
        argv[1:1] = ["-k", environ[KERNEL_ENV]]
    return argv


def run(args: argparse.Namespace) -> None:
    import click
    from papermill.cli import papermill

    if not args.papermill_args:
        raise SystemExit("petlprune notebook: give papermill's arguments: TEMPLATE OUTPUT [-p NAME VALUE ...]")
    # standalone_mode=False: errors propagate as exceptions (a failed cell: PapermillExecutionError,
    # with the cell's traceback), and click's return is not a sys.exit in the worker's child.
    try:
        papermill.main(args=papermill_argv(args.papermill_args), prog_name="papermill", standalone_mode=False)
    except click.ClickException as err:  # a usage error: papermill's own message, exit status 2
        err.show()
        raise SystemExit(err.exit_code) from None
