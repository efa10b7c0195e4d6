"""``petlprune gallery``: one figure with samples of several classes of every task."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="task (or source) folders, one row each")
    parser.add_argument("--per-class", type=int, default=2, help="samples per shown class (default 2)")
    parser.add_argument("--classes-per-row", type=int, default=8, help="classes shown per row (default 8)")


def run(args: argparse.Namespace) -> None:
    from petlprune.data.gallery import save_gallery

    path = save_gallery(args.dirs, args.out, per_class=args.per_class, classes_per_row=args.classes_per_row)
    print(f"gallery: {len(args.dirs)} rows -> {path}", flush=True)
