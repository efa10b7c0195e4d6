"""``petlprune data``: generate one embedded task, or check and register a real VTAB-1k folder."""

from __future__ import annotations

import argparse
import time

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task", required=True, help="task name (an embedded task, or the VTAB-1k task name)"
    )
    parser.add_argument("--out", required=True, help="output folder (VTAB-1k layout), replaced atomically")
    parser.add_argument("--seed", type=int, help="generation seed (embedded tasks)")
    parser.add_argument("--image-size", type=int, help="image side in pixels (embedded tasks)")
    parser.add_argument(
        "--sizes",
        help="images per split, e.g. train800=800,val200=200,test=1000 (embedded tasks)",
    )
    parser.add_argument(
        "--vtab-root",
        help="a real VTAB-1k task folder ({split}.txt lists): check it and register it in --out "
        "instead of generating (--seed/--image-size/--sizes are then not used)",
    )
    parser.add_argument(
        "--num-classes", type=int, help="with --vtab-root: number of classes (default max label + 1)"
    )
    parser.add_argument(
        "--manifest",
        help="with --vtab-root: a sha256sum-format manifest of the VTAB-1k copy (paths relative to its "
        "folder); every entry of this task is checked first, a mismatch stops the job",
    )


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.vtab_root:
        from petlprune.data.vtab import DatasetError, import_vtab_folder

        print(f"data: checking VTAB-1k folder {args.vtab_root} for task {args.task}"
              + (f" against {args.manifest}" if args.manifest else ""), flush=True)
        try:
            meta = import_vtab_folder(args.vtab_root, args.out, name=args.task, num_classes=args.num_classes,
                                      manifest=args.manifest)
        except DatasetError as err:  # the message names the file; a traceback would only bury it
            raise SystemExit(f"petlprune data: {err}") from None
    else:
        from petlprune.data.synthetic import TASKS, generate_task, parse_sizes

        if args.manifest:
            raise SystemExit("petlprune data: --manifest applies to a real VTAB-1k folder (--vtab-root)")
        missing = [
            f"--{k.replace('_', '-')}" for k in ("seed", "image_size", "sizes") if getattr(args, k) is None
        ]
        if missing:
            raise SystemExit(f"petlprune data: embedded task {args.task!r} needs {', '.join(missing)}")
        if args.task not in TASKS:
            raise SystemExit(f"petlprune data: unknown task {args.task!r}; known: {', '.join(sorted(TASKS))}")
        sizes = parse_sizes(args.sizes)
        print(
            f"data: generating {args.task} (seed {args.seed}, {args.image_size}px, {sizes}) -> {args.out}",
            flush=True,
        )
        meta = generate_task(args.task, args.out, seed=args.seed, image_size=args.image_size, sizes=sizes)
    counts = ", ".join(f"{k}={v}" for k, v in meta["counts"].items())
    print(
        f"data: {meta['name']}: {meta['num_classes']} classes, {counts} ({time.perf_counter() - start:.1f}s)",
        flush=True,
    )
