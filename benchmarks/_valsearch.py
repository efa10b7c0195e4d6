"""The machinery of ``select_on_val.py``: the tier config, its inputs, the --val steps, the table.

A :class:`Step` is one ``petlprune`` command and the file whose presence means it finished (the
stages write it last, atomically). :class:`Run` builds the steps of one PETL, with the arguments the
workflow's rules give (``workflow/rules/finetune.smk``, ``prune.smk``) plus ``--val``; every output
folder carries a hash of the command that makes it, so a cached output is always the output of that
exact command.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ROOT", "SCHEMA", "PETLS", "VAL_SPLITS", "Variant", "Step", "Run", "load_tier", "prepare_inputs", "run_steps",
           "read_val_metrics", "markdown_table", "write_table"]

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"  # what the Snakefile validates a tier with
PETLS: list[str] = yaml.safe_load(SCHEMA.read_text())["$defs"]["petl_name"]["enum"]
VAL_SPLITS = {"train_split": "train800", "eval_split": "val200"}  # what every metrics file read must say


@dataclass(frozen=True)
class Variant:
    """One row of a pruning search: a registered method with its options."""

    name: str  # file-safe key (pear_nearest_init)
    label: str  # what the table shows
    method: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Step:
    label: str
    argv: tuple[str, ...]  # petlprune STAGE ARGS...
    done: Path  # written last by the stage: present = finished
    log: Path


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _hash(obj: Any) -> str:
    return hashlib.sha1(_json(obj).encode()).hexdigest()[:8]


def _env() -> dict[str, str]:
    """This interpreter's bin folder first: the DAG's shell rules call ``petlprune`` from it."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def load_tier(path: Path) -> dict[str, Any]:
    """A tier config, validated against the schema the Snakefile validates it with."""
    import jsonschema

    if not path.is_file():
        raise SystemExit(f"--config {path}: no such file (the tiers are in {ROOT / 'workflow/config'})")
    cfg = yaml.safe_load(path.read_text())
    schema = yaml.safe_load(SCHEMA.read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "top level"
        raise SystemExit(f"--config {path}: {where}: {error.message}")
    return cfg


def prepare_inputs(cfg: dict[str, Any], config: Path, results: Path | None, work: Path,
                   tasks: Sequence[str]) -> tuple[dict[str, Path], Path]:
    """(task -> task folder, backbone file): from ``results``, else made by the DAG under ``work/dag``."""
    needed = [f"data/{t}/meta.json" for t in tasks] + [f"backbone/{cfg['backbone']['name']}.pt"]
    if results is not None:
        if not results.is_dir():
            raise SystemExit(f"--results {results}: no such results tree (run the tier first, "
                             f"`snakemake --cores 2 --configfile {config}`, or leave --results out)")
        missing = [r for r in needed if not (results / r).is_file()]
        if missing:
            raise SystemExit(f"--results {results}: {results / missing[0]} is missing (the tier makes it: "
                             f"`snakemake --cores 2 --configfile {config} {cfg['results']}/{missing[0]}`; "
                             "or leave --results out to make it under --work)")
        tree = results
    else:
        dag = work / "dag"
        tree = dag / cfg["results"]
        todo = [r for r in needed if not (tree / r).is_file()]
        if todo:
            log = dag / "snakemake.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(dag),
                   "--configfile", str(config.resolve()), "--cores", "1", *[f"{cfg['results']}/{r}" for r in todo]]
            print(f"[dag] snakemake {' '.join(todo)} in {dag} ...", end=" ", flush=True)
            t0 = time.perf_counter()
            with log.open("w") as fh:
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env()).returncode
            if rc != 0:
                raise SystemExit(f"\nsnakemake failed (exit {rc}) making the inputs; log: {log}\n{_tail(log)}")
            print(f"{time.perf_counter() - t0:.1f} s", flush=True)
    data = {t: (tree / "data" / t).resolve() for t in tasks}
    return data, (tree / needed[-1]).resolve()


class Run:
    """The --val steps of one PETL under ``work/runs/{task}/{petl}/seed{seed}/``."""

    def __init__(self, cfg: dict[str, Any], work: Path, petl: str, data: dict[str, Path], backbone: Path,
                 device: str = "auto") -> None:
        self.cfg, self.work, self.petl, self.data, self.backbone = cfg, work.resolve(), petl, data, backbone
        self.common = ("--threads", str(cfg.get("threads", 1)), "--device", device)
        self.petl_options = cfg["petl"].get("options", {}).get(petl, {})

    def recipe(self, stage: str, **override: Any) -> dict[str, Any]:
        """The workflow's ``recipe(stage, petl)``: the shared recipe, this PETL's petl.recipes on top."""
        from petlprune.tier import recipe

        return {**recipe(self.cfg, stage, self.petl), **override}

    def finetune(self, task: str, seed: int, lr: float | None = None, label: str | None = None,
                 backbone: Path | None = None, petl_options: dict[str, Any] | None = None) -> tuple[Step, Path]:
        """(the --val fine-tune step, its run folder); ``lr`` overrides the tier recipe's, ``backbone``
        the tier's backbone file, ``petl_options`` are set over the tier's PETL options."""
        train = self.recipe("finetune", **({} if lr is None else {"lr": lr}))
        backbone = self.backbone if backbone is None else backbone
        options = {**self.petl_options, **(petl_options or {})}
        args = ("--data", str(self.data[task]), "--backbone", str(backbone), "--petl", self.petl,
                "--petl-options", _json(options), "--train", _json(train), "--seed", str(seed),
                *self.common, "--val")
        ftdir = self.work / "runs" / task / self.petl / f"seed{seed}" / f"ft-lr{train['lr']:g}-{_hash(args)}"
        out = ftdir / "finetune"
        label = label or f"(tier recipe, lr {train['lr']:g})"
        return Step(f"finetune {self.petl} {task} seed{seed} {label}", ("finetune", *args, "--out", str(out)),
                    out / "metrics.json", out / "finetune.log"), ftdir

    def prune(self, task: str, seed: int, variant: Variant, budget: str) -> tuple[list[Step], Path]:
        """(every step from the fine-tune to the pruned, re-trained model, its metrics file)."""
        from petlprune.methods import get

        ft, ftdir = self.finetune(task, seed)
        io = ("--model", str(ft.done.parent / "model.pt"), "--backbone", str(self.backbone),
              "--data", str(self.data[task]))
        where = f"{task} seed{seed}"
        steps = [ft]
        # --val scorers see train800 only (score.py), so the features pass runs over train800 as well
        features = ftdir / "features-train800.npz"
        if "features" in get(variant.method).needs:
            steps.append(Step(f"features {self.petl} {where} (train800)",
                              ("features", *io, "--split", "train800", *self.common, "--out", str(features)),
                              features, ftdir / "features-train800.log"))
        retrain = self.recipe("retrain")
        vdir = ftdir / f"{variant.name}-{_hash([variant.method, variant.options, retrain])}"
        score, plan, pruned = vdir / "score.json", vdir / f"plan-{budget}.json", vdir / f"pruned-{budget}"
        steps += [
            Step(f"score {variant.name} {where}",
                 ("score", "--method", variant.method, *io, "--features", str(features), "--options",
                  _json(variant.options), "--seed", str(seed), *self.common, "--val", "--out", str(score)),
                 score, vdir / "score.log"),
            Step(f"plan {variant.name} {budget} {where}",
                 ("plan", "--method", variant.method, "--scores", str(score), "--budget", budget, "--out", str(plan)),
                 plan, vdir / f"plan-{budget}.log"),
            Step(f"prune {variant.name} {budget} {where} (re-train train800, evaluate val200)",
                 ("prune", *io[:4], "--plan", str(plan), *io[4:], "--train", _json(retrain), "--seed", str(seed),
                  *self.common, "--val", "--out", str(pruned)),
                 pruned / "metrics.json", pruned / "prune.log"),
        ]
        return steps, pruned / "metrics.json"


def run_steps(steps: Sequence[Step]) -> None:
    """Run each step not yet done (a step listed twice runs once), printing ``[i/n] label ...``."""
    unique = list({s.done: s for s in steps}.values())
    for i, step in enumerate(unique, 1):
        print(f"[{i}/{len(unique)}] {step.label} ...", end=" ", flush=True)
        if step.done.is_file():
            print("done before, skipped", flush=True)
            continue
        step.log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with step.log.open("w") as fh:
            rc = subprocess.run([sys.executable, "-m", "petlprune.cli", *step.argv], stdout=fh,
                                stderr=subprocess.STDOUT, env=_env()).returncode
        if rc != 0 or not step.done.is_file():
            raise SystemExit(f"\n{step.label}: `petlprune {step.argv[0]}` failed (exit {rc}); log: {step.log}\n"
                             f"{_tail(step.log)}")
        print(f"{time.perf_counter() - t0:.1f} s", flush=True)


def read_val_metrics(path: Path, task: str, seed: int) -> dict[str, Any]:
    """One table cell from a metrics file, which must be a train800 -> val200 result."""
    m = json.loads(path.read_text())
    wrong = {k: m.get(k) for k, v in VAL_SPLITS.items() if m.get(k) != v}
    if wrong:
        raise SystemExit(f"{path}: {wrong} where a search reads only {VAL_SPLITS} results (never test)")
    cell = {"task": task, "seed": seed, "top1": m["top1"], "metrics": str(path),
            **{k: m[k] for k in VAL_SPLITS}}
    if m.get("kept_blocks") is not None:  # a pruned model: what its Plan kept
        plan = json.loads(Path(m["provenance"]["plan"]).read_text())
        positions = plan.get("extra", {}).get("kept_positions")  # Pear: the adapters kept, blocks all kept
        cell.update(top1_before_retrain=m["top1_before_retrain"], kept_blocks=m["kept_blocks"],
                    kept_adapters=positions,
                    kept=",".join(str(i) for i in (positions if positions is not None else m["kept_blocks"])))
    return cell


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def versus_first(rows: Sequence[dict[str, Any]]) -> None:
    """Each row after the first gets ``versus_first``: its paired difference from the first row (points,
    95% interval; the per-image predictions next to each metrics file, stratified by task x seed)."""
    import numpy as np

    from petlprune.report.stats import combine_seeds

    def correct_arrays(row: dict[str, Any]) -> list[tuple[Any, Any]] | None:
        files = [Path(c["metrics"]).parent / "predictions.npz" for c in row["cells"]]
        if not all(f.is_file() for f in files):
            return None
        return [(z["labels"], z["pred"]) for z in (np.load(f) for f in files)]

    first = correct_arrays(rows[0])
    for row in rows[1:]:
        mine = correct_arrays(row)
        if first is None or mine is None:
            row["versus_first"] = None
            continue
        d = combine_seeds([(lab, pred, ref) for (lab, pred), (_, ref) in zip(mine, first, strict=True)])
        row["versus_first"] = {"diff": d.diff, "lo": d.lo, "hi": d.hi}


def write_table(work: Path, table: dict[str, Any]) -> tuple[Path, Path]:
    """Means, paired differences from the first row and the winner into ``table``; print it; write
    ``WORK/{key}.md`` and ``.json``."""
    for row in table["rows"]:
        row["mean_top1"] = sum(c["top1"] for c in row["cells"]) / len(row["cells"])
    versus_first(table["rows"])
    best = max(r["mean_top1"] for r in table["rows"])
    winners = [r for r in table["rows"] if r["mean_top1"] == best]
    table["winner"] = {"name": winners[0]["name"], "label": winners[0]["label"], "mean_top1": best,
                       "tied_with": [r["name"] for r in winners[1:]]}
    table["metrics_read"] = [c["metrics"] for r in table["rows"] for c in r["cells"]]
    header = [table["search"]]
    for c in table["rows"][0]["cells"]:
        header += [f"{c['task']} s{c['seed']}"] + (["kept"] if table["show_kept"] else [])
    first = table["rows"][0]["label"]
    header += ["mean", f"Δ vs {first} (95%)"]
    body = []
    for row in table["rows"]:
        cells = [row["label"]]
        for c in row["cells"]:
            cells += [f"{100 * c['top1']:.1f}"] + ([c["kept"]] if table["show_kept"] else [])
        vs = row.get("versus_first")
        delta = "—" if vs is None else f"{vs['diff']:+.1f} [{vs['lo']:+.1f}, {vs['hi']:+.1f}]"
        body.append(cells + [f"{100 * row['mean_top1']:.1f}", delta])
    tied = f" (tied with {', '.join(r['label'] for r in winners[1:])})" if winners[1:] else ""
    kept = ("; kept: the blocks (layer pruning) or adapter positions (Pear) the Plan kept"
            if table["show_kept"] else "")
    text = (f"## {table['title']}: val200 top-1 (%), trained on train800\n\n"
            f"{markdown_table(header, body)}\n\nwinner: **{table['winner']['label']}** "
            f"(mean val200 top-1 {100 * best:.1f}%){tied}{kept}. Δ: paired difference from {first} on the "
            f"same val images (points); it separates two rows only where its interval excludes 0."
            f"\n\n`{table['command']}`\n")
    print("\n" + text)
    work.mkdir(parents=True, exist_ok=True)
    md, js = work / f"{table['key']}.md", work / f"{table['key']}.json"
    md.write_text(text)
    js.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {md} and {js}")
    return md, js
