"""Choose on validation: search a recipe or a method variant on train800 -> val200, never on test.

Every step is a ``petlprune <stage> ... --val`` command with the arguments the workflow's rules give it
(``finetune --val``, ``features --split train800``, ``score --val``, ``plan``, ``prune --val``), run one
after another under ``--work``. Each output path carries a short hash of the command that makes it, so
a step whose output exists is skipped (a re-run continues; a changed recipe or option makes new
outputs), and the tier's --val fine-tune is shared by every mode that needs it. Every metrics file the
table reads must say ``eval_split: val200`` and ``train_split: train800``, else the search stops.
The table (val200 top-1 per task x seed, its mean, the winner) is printed and written to
``WORK/<search>.md`` and ``.json``.

    # on a finished default run (results/data/<task>/, results/backbone/embedded-vit.pt)
    python benchmarks/select_on_val.py finetune-lr --results results --petl splora \\
        --lr 1e-3 3e-3 1e-2 --tasks dsprites_ori clevr_count --seeds 0 1
    python benchmarks/select_on_val.py sglp-context --results results --tasks textures clevr_count --budget d6
    python benchmarks/select_on_val.py pear --results results --tasks textures clevr_count --budget r0.5
    # the bundled backbone against another backbone.yaml recipe's (its results/<...>/backbone/embedded-vit.pt)
    python benchmarks/select_on_val.py backbone --results results --seeds 0 1 \\
        --candidates lr1e-3=results/backbone_lr1e3/backbone/embedded-vit.pt
    # another tier; without --results its data and backbone are made by the DAG under WORK/dag/
    python benchmarks/select_on_val.py pear --config workflow/config/smoke.yaml --tasks digits
    # a PETL option (one fine-tune per value) or one SGLP option (one row per value), book/methods/*.md
    python benchmarks/select_on_val.py petl-option --results results --petl splora --option init --values library linear
    python benchmarks/select_on_val.py sglp-option --results results --option boundaries --values exact official

Modes: ``finetune-lr`` (one row per lr: the tier's fine-tuning recipe for that PETL, lr overridden),
``sglp-context`` (SGLP with the tier's options, GradNorm context ``official`` vs ``finetuned``, each
with its declared default ``pick`` unless given as ``context:pick``), ``pear`` (every share x kc
combination Pear declares, plus ``adapter_drop``), ``backbone`` (the tier's fine-tuning recipe on the tier's
backbone and on each ``--candidates NAME=PATH``), ``petl-option`` (the fine-tune with one PETL option set to
each of ``--values``), ``sglp-option`` (SGLP with the tier's options, one option set to each of ``--values``). Every row after the first has its paired difference
from the first on the same val images. Not a timing benchmark: nothing goes to the book.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from petlprune.tier import instance_options

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _valsearch import (  # noqa: E402
    PETLS,
    ROOT,
    Run,
    Variant,
    load_tier,
    prepare_inputs,
    read_val_metrics,
    run_steps,
    write_table,
)

__all__ = ["sglp_variants", "sglp_option_variants", "pear_variants", "checked_variants", "main"]


def sglp_variants(cfg: dict[str, Any], contexts: list[str]) -> list[Variant]:
    """SGLP with the tier's options, one variant per ``context`` or ``context:pick``."""
    from petlprune.methods.sglp import CONTEXTS, DEFAULT_PICK, PICKS

    base = {k: v for k, v in instance_options(cfg, "sglp").items() if k not in ("context", "pick")}
    out = []
    for text in contexts:
        context, _, pick = text.partition(":")
        if context not in CONTEXTS or (pick and pick not in PICKS):
            raise SystemExit(f"--contexts {text}: expected CONTEXT[:PICK], CONTEXT in {list(CONTEXTS)}, "
                             f"PICK in {list(PICKS)}")
        options = {**base, "context": context, **({"pick": pick} if pick else {})}
        name = f"sglp_{context}" + (f"_{pick}" if pick else "")
        out.append(Variant(name, f"{context} (pick {pick or DEFAULT_PICK[context]})", "sglp", options))
    return out


def sglp_option_variants(cfg: dict[str, Any], option: str, values: list[str]) -> list[Variant]:
    """SGLP with the tier's options and ``option`` set to each of ``values`` (YAML scalars).

    Every option is written out (declared defaults filled in), and a row equal to the tier's own SGLP
    is named ``sglp_tier``, so two searches share that row's steps (its folder is the same).
    """
    import yaml

    from petlprune.methods import get

    sglp = get("sglp")
    tier = sglp.check_options(instance_options(cfg, "sglp"))
    out = []
    for text in values:
        try:
            options = sglp.check_options({**instance_options(cfg, "sglp"), option: yaml.safe_load(text)})
        except ValueError as err:
            raise SystemExit(f"--option {option} --values {text}: {err}") from None
        name = "sglp_tier" if options == tier else f"sglp_{option}_{text}"
        out.append(Variant(name, f"{option} {text}", "sglp", options))
    return out


def pear_variants(cfg: dict[str, Any]) -> list[Variant]:
    """Every share x kc combination Pear declares and accepts, then ``adapter_drop``.

    share ``none`` with kc ``none`` is ``adapter_drop`` itself, so it appears once, as that row.
    """
    from petlprune.methods import get
    from petlprune.methods.base import OptionError

    pear = get("pear")
    specs = {o.name: o for o in pear.option_specs}
    base = {k: v for k, v in instance_options(cfg, "pear").items() if k not in ("share", "kc")}
    out = []
    for share in specs["share"].choices:
        for kc in specs["kc"].choices:
            if share == "none" and kc == "none":
                continue
            try:
                pear.check_options({**base, "share": share, "kc": kc})
            except OptionError:  # kc init/scale act on a serving adapter: share none has none
                continue
            out.append(Variant(f"pear_{share}_{kc}", f"pear share={share} kc={kc}", "pear",
                               {**base, "share": share, "kc": kc}))
    drop = instance_options(cfg, "adapter_drop") if "adapter_drop" in cfg["methods"] else base
    out.append(Variant("adapter_drop", "adapter_drop", "adapter_drop", drop))
    return out


def _default_petl(cfg: dict[str, Any], instance: str | None) -> str:
    own = cfg["methods"].get(instance, {}).get("petl") if instance else None
    return own or cfg["petl"]["methods"][0]


def _default_budget(cfg: dict[str, Any], instance: str) -> str | None:
    return next((b for b in cfg["budgets"].get(instance, []) if b != "matched"), None)


def _number(text: str) -> str:
    """argparse type: a number, kept as written (the table's row label)."""
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return text


def finetune_lr(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    lrs = [(text, float(text)) for text in args.lr]
    steps, cells = [], {}
    for task in args.tasks:
        for seed in args.seeds:
            for text, lr in lrs:
                step, _ = run.finetune(task, seed, lr=lr, label=f"lr {text}")
                steps.append(step)
                cells[(f"lr {text}", task, seed)] = step.done
    run_steps(steps)
    rows = [{"name": f"lr {text}", "label": f"lr {text}", "lr": lr,
             "cells": [read_val_metrics(cells[(f"lr {text}", t, s)], t, s) for t in args.tasks for s in args.seeds]}
            for text, lr in lrs]
    return {"search": "finetune-lr", "title": f"fine-tuning lr of {run.petl}", "key": f"finetune-lr-{run.petl}",
            "tier_recipe": run.recipe("finetune"), "rows": rows, "show_kept": False}


def petl_option(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """The tier's fine-tune of ``--petl`` with ``--option`` set to each of ``--values`` (first row: the first value)."""
    import yaml

    values = [(text, yaml.safe_load(text)) for text in args.values]
    steps, cells = [], {}
    for task in args.tasks:
        for seed in args.seeds:
            for text, value in values:
                step, _ = run.finetune(task, seed, label=f"{args.option} {text}", petl_options={args.option: value})
                steps.append(step)
                cells[(text, task, seed)] = step.done
    run_steps(steps)
    rows = [{"name": f"{args.option} {text}", "label": f"{args.option} {text}", args.option: value,
             "cells": [read_val_metrics(cells[(text, t, s)], t, s) for t in args.tasks for s in args.seeds]}
            for text, value in values]
    return {"search": "petl-option", "title": f"{run.petl} option {args.option}",
            "key": f"petl-option-{run.petl}-{args.option}", "tier_recipe": run.recipe("finetune"), "rows": rows,
            "show_kept": False}


def _named_path(text: str) -> tuple[str, Path]:
    """argparse type: ``NAME=PATH`` of an existing file (a backbone cache, ``backbone/<name>.pt``)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=PATH of an existing backbone file")
    return name, Path(path).resolve()


def backbone_search(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """The tier's fine-tuning recipe on the tier's backbone (first row) and on each candidate."""
    names = [n for n, _ in args.candidates]
    if len(set(names)) != len(names) or "tier" in names:
        raise SystemExit(f"--candidates: names must be distinct and not 'tier' (got {', '.join(names)})")
    backbones = [("tier", run.backbone), *args.candidates]
    steps, cells = [], {}
    for task in args.tasks:
        for seed in args.seeds:
            for name, path in backbones:
                step, _ = run.finetune(task, seed, label=f"backbone {name}", backbone=path)
                steps.append(step)
                cells[(name, task, seed)] = step.done
    run_steps(steps)
    rows = [{"name": name, "label": name, "backbone": str(path),
             "cells": [read_val_metrics(cells[(name, t, s)], t, s) for t in args.tasks for s in args.seeds]}
            for name, path in backbones]
    return {"search": "backbone", "title": f"backbone, transfer with {run.petl}", "key": f"backbone-{run.petl}",
            "tier_recipe": run.recipe("finetune"), "rows": rows, "show_kept": False}


def checked_variants(args: argparse.Namespace, variants: list[Variant]) -> list[Variant]:
    """The rows ``--variants`` asks for, each with its options and ``--budget`` checked (before any step)."""
    from petlprune.methods import Budget, get
    from petlprune.methods.base import check_method_config

    if args.variants:
        known = [v.name for v in variants]
        unknown = [v for v in args.variants if v not in known]
        if unknown:
            raise SystemExit(f"--variants {unknown[0]}: not a variant of {args.mode} (known: {', '.join(known)})")
        variants = [v for v in variants if v.name in args.variants]
    try:
        budget = Budget.parse(args.budget)
    except ValueError as err:
        raise SystemExit(f"--budget {err}") from None
    if budget.kind == "matched":
        raise SystemExit("--budget matched needs the SLS plan of the run; give a fixed budget (d6, r0.5, ...)")
    for v in variants:
        kinds = get(v.method).budget_kinds
        if budget.kind not in kinds:
            raise SystemExit(f"--budget {args.budget}: {v.method} takes {' or '.join(kinds)} budgets, not {budget.kind}")
        try:
            check_method_config(v.name, v.method, v.options, [args.budget])
        except ValueError as err:  # options from the tier: the message names its config key
            raise SystemExit(f"{args.mode} {v.name} ({args.config}): {err}") from None
    return variants


def prune_search(args: argparse.Namespace, run: Run, variants: list[Variant]) -> dict[str, Any]:
    search = f"sglp-{args.option}" if args.mode == "sglp-option" else args.mode  # one table per option
    steps, cells = [], {}
    for task in args.tasks:
        for seed in args.seeds:
            for v in variants:  # the fine-tune and the features pass are listed by each, run once
                new, metrics = run.prune(task, seed, v, args.budget)
                steps += new
                cells[(v.name, task, seed)] = metrics
    run_steps(steps)
    rows = [{"name": v.name, "label": v.label, "method": v.method, "options": v.options,
             "cells": [read_val_metrics(cells[(v.name, t, s)], t, s) for t in args.tasks for s in args.seeds]}
            for v in variants]
    return {"search": search, "title": f"{search} on {run.petl} at {args.budget}",
            "key": f"{search}-{run.petl}-{args.budget}", "budget": args.budget,
            "tier_recipe": run.recipe("retrain"), "rows": rows, "show_kept": True}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=ROOT / "workflow/config/default.yaml",
                        help="tier config: data, backbone, PETL options, recipes, method options")
    common.add_argument("--results", type=Path, default=None,
                        help="a results tree with data/<task>/ and backbone/<name>.pt (default: made by the DAG under WORK/dag)")
    common.add_argument("--work", type=Path, default=None, help="scratch folder (default: results/select/<tier>)")
    common.add_argument("--tasks", nargs="+", default=None, help="tasks of the tier (default: all of data.tasks)")
    common.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the tier's)")
    common.add_argument("--petl", default=None, help="PETL to fine-tune (default: the method's own, else petl.methods[0])")
    common.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (passed to every stage)")
    sub = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    lr = sub.add_parser("finetune-lr", parents=[common], help="fine-tuning lr: one row per --lr")
    lr.add_argument("--lr", nargs="+", type=_number, required=True, help="learning rates to try (e.g. 1e-3 3e-3 1e-2)")
    sglp = sub.add_parser("sglp-context", parents=[common], help="SGLP's GradNorm context: official vs finetuned")
    sglp.add_argument("--contexts", nargs="+", default=["official", "finetuned"], help="CONTEXT or CONTEXT:PICK")
    sglp_opt = sub.add_parser("sglp-option", parents=[common], help="SGLP with one option set to each of --values")
    petl_opt = sub.add_parser("petl-option", parents=[common], help="the fine-tune with one PETL option per --values")
    for p in (sglp_opt, petl_opt):
        p.add_argument("--option", required=True, help="the option's name (e.g. boundaries, tokens; init)")
        p.add_argument("--values", nargs="+", required=True, help="its values, YAML scalars; the first is the reference")
    pear = sub.add_parser("pear", parents=[common], help="every Pear share x kc variant, and adapter_drop")
    bb = sub.add_parser("backbone", parents=[common],
                        help="train800 -> val200 transfer of the tier's backbone and of each candidate backbone")
    bb.add_argument("--candidates", nargs="+", type=_named_path, required=True, metavar="NAME=PATH",
                    help="other pretrained backbones (each a backbone/<name>.pt, e.g. of a backbone.yaml variant)")
    for p in (sglp, sglp_opt, pear):
        p.add_argument("--budget", default=None, help="fixed budget (default: the tier's first non-matched one)")
        p.add_argument("--variants", nargs="+", default=None, help="run only these rows (names as in the JSON)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_tier(args.config)
    tier_tasks = cfg["data"]["tasks"]
    args.tasks = args.tasks or list(tier_tasks)
    unknown = [t for t in args.tasks if t not in tier_tasks]
    if unknown:
        raise SystemExit(f"--tasks {unknown[0]}: not a task of {args.config} (data.tasks: {', '.join(tier_tasks)})")
    args.seeds = args.seeds if args.seeds is not None else list(cfg["seeds"])
    instance = {"sglp-context": "sglp", "sglp-option": "sglp", "pear": "pear"}.get(args.mode)
    petl = args.petl or _default_petl(cfg, instance)
    if petl not in PETLS:
        raise SystemExit(f"--petl {petl}: unknown PETL (known: {', '.join(PETLS)})")
    if args.mode == "petl-option":
        from petlprune.models.petl import PETL_DEFAULTS

        if args.option not in PETL_DEFAULTS[petl]:
            raise SystemExit(f"--option {args.option}: not an option of PETL {petl} "
                             f"(known: {', '.join(PETL_DEFAULTS[petl]) or 'none'})")
    if instance:
        args.budget = args.budget or _default_budget(cfg, instance)
        if args.budget is None:
            raise SystemExit(f"{args.mode}: give --budget ({args.config} has no fixed budget for {instance})")
        variants = checked_variants(args, (sglp_option_variants(cfg, args.option, args.values)
                                           if args.mode == "sglp-option"
                                           else sglp_variants(cfg, args.contexts) if instance == "sglp"
                                           else pear_variants(cfg)))
    work = args.work or Path("results/select") / args.config.stem
    data, backbone = prepare_inputs(cfg, args.config, args.results, work, args.tasks)
    run = Run(cfg, work, petl, data, backbone, device=args.device)
    if instance:
        table = prune_search(args, run, variants)
    else:
        table = {"backbone": backbone_search, "petl-option": petl_option}.get(args.mode, finetune_lr)(args, run)
    given = sys.argv[1:] if argv is None else argv
    table.update(config=str(args.config), petl=petl, tasks=args.tasks, seeds=args.seeds,
                 command=shlex.join(["python", "benchmarks/select_on_val.py", *given]))
    write_table(work, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
