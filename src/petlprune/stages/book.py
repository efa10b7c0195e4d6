"""``petlprune book``: assemble the generated part of the jupyter-book from the results tree.

Copies the executed notebooks (``results/notebooks/``) and the data gallery into
``{book}/generated/`` and writes the data and provenance pages the hand-written pages include.
The rule then runs ``jupyter-book build {book}`` (notebooks are not executed again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, required=True, help="the results/ directory")
    parser.add_argument("--book", type=Path, required=True, help="the jupyter-book source folder (book/)")
    parser.add_argument("--config", type=Path, action="append", default=[], metavar="YAML",
                        help="config file shown on the reproducibility page (repeatable)")
    parser.add_argument("--config-json", default=None, metavar="JSON",
                        help="the configuration as run (JSON text, e.g. Snakemake's merged config)")
    parser.add_argument("--rulegraph", type=Path, default=None,
                        help="`snakemake --rulegraph` output (default: RESULTS/rulegraph.dot if it exists)")


def run(args: argparse.Namespace) -> None:
    import json

    from petlprune.report.book import assemble_book

    effective = None
    if args.config_json is not None:
        try:
            effective = json.loads(args.config_json)
        except json.JSONDecodeError as err:
            raise SystemExit(f"petlprune book: --config-json is not valid JSON ({err})") from None
    rulegraph = args.rulegraph
    if rulegraph is None and (args.results / "rulegraph.dot").is_file():
        rulegraph = args.results / "rulegraph.dot"
    elif rulegraph is not None and not rulegraph.is_file():
        raise SystemExit(f"petlprune book: rule graph file not found: {rulegraph}")
    placed = assemble_book(args.results, args.book, configs=args.config, rulegraph=rulegraph,
                           effective_config=effective)
    print(f"{args.book / 'generated'}: {len(placed)} notebooks, rule graph "
          f"{'from ' + str(rulegraph) if rulegraph else 'absent'}", flush=True)
