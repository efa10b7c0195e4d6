"""``petlprune source``: generate the FractalDB-style source data used to pretrain the backbone."""

from __future__ import annotations

import argparse
import time

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="output folder (train.txt, test.txt, images/, meta.json)"
    )
    parser.add_argument("--seed", type=int, required=True, help="generation seed")
    parser.add_argument("--classes", type=int, required=True, help="number of fractal classes")
    parser.add_argument("--train-per-class", type=int, required=True, help="training images per class")
    parser.add_argument("--test-per-class", type=int, required=True, help="test images per class")
    parser.add_argument("--image-size", type=int, required=True, help="image side in pixels")


def run(args: argparse.Namespace) -> None:
    from petlprune.data.fractal import generate_source

    start = time.perf_counter()
    print(
        f"source: {args.classes} fractal classes x ({args.train_per_class} train + "
        f"{args.test_per_class} test) at {args.image_size}px, seed {args.seed} -> {args.out}",
        flush=True,
    )
    meta = generate_source(
        args.out,
        seed=args.seed,
        classes=args.classes,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        image_size=args.image_size,
    )
    print(f"source: wrote {meta['counts']} ({time.perf_counter() - start:.1f}s)", flush=True)
