"""Config validation: a bad config stops snakemake at once, and the message names the culprit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _helpers import set_key as _set
from _helpers import smoke, snakemake_dry_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "workflow" / "config").glob("*.yaml"))




@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    import jsonschema

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text()))



BAD = {
    "unknown top-level key": (lambda c: _set(c, "epochs", 3), "epochs"),
    "unknown nested key": (lambda c: _set(c, "finetune.epoch", 3), "epoch"),
    "wrong type": (lambda c: _set(c, "finetune.epochs", "ten"), "ten"),
    "unknown dataset": (lambda c: _set(c, "data.tasks", ["digits", "imagenet"]), "imagenet"),
    "unknown method": (lambda c: _set(c, "methods.magic_prune", {}), "magic_prune"),
    "budget for a method not configured": (
        lambda c: _set(_set(c, "methods", {k: v for k, v in c["methods"].items() if k != "angular"}), "budgets.angular", ["d3"]),
        "budgets.angular",
    ),
    "malformed budget": (lambda c: _set(c, "budgets.last_k", ["half"]), "half"),
    # budgets the backbone cannot have (the smoke backbone has 6 blocks; core/budgets.py)
    "depth 0": (lambda c: _set(c, "budgets.last_k", ["d0"]), "config key budgets.last_k: budget 'd0'"),
    "deeper than the backbone": (lambda c: _set(c, "budgets.last_k", ["d7"]),
                                 "config key budgets.last_k: budget 'd7': 7 blocks kept, but the backbone has 6"),
    "ratio above 1": (lambda c: _set(c, "budgets.pear", ["r1.5"]), "config key budgets.pear: budget 'r1.5'"),
    "density above 1": (lambda c: _set(c, "budgets.spa", ["p1.5"]), "config key budgets.spa: budget 'p1.5'"),
    # backbone shapes that do not divide (core/backbone.py)
    "width not divisible by heads": (lambda c: _set(c, "backbone.timm_kwargs.num_heads", 5),
                                     "config key backbone.timm_kwargs.num_heads: embed_dim 32"),
    "image not tiled by patches": (lambda c: _set(c, "backbone.timm_kwargs.patch_size", 5),
                                   "config key backbone.timm_kwargs.patch_size: img_size 32"),
    # PETL options, declared in core/petl.py
    "PETL option typo": (lambda c: _set(c, "petl.options.adapter.bottlenek", 4),
                         "config key petl.options.adapter.bottlenek: PETL method 'adapter': unknown option"),
    "PETL option out of range": (lambda c: _set(c, "petl.options.adapter.bottleneck", 0),
                                 "config key petl.options.adapter.bottleneck"),
    "PETL option of the wrong type": (lambda c: _set(c, "petl.options.splopa.prototypes", "four"),
                                      "config key petl.options.splopa.prototypes"),
    # a file the config names
    "checkpoint that does not exist": (
        lambda c: _set(_set(c, "backbone.weights", "file"), "backbone.checkpoint", "no/such/vit.pt"),
        "config key backbone.checkpoint: 'no/such/vit.pt' is not a file"),
    # method options of the wrong type or range (the methods that declare them: methods/base.py Option)
    "method option of the wrong type": (lambda c: _set(c, "methods.depgraph.batches", "two"),
                                        "config key methods.depgraph.batches"),
    "method option out of range": (lambda c: _set(c, "methods.taylor_layer.batches", 0),
                                   "config key methods.taylor_layer.batches"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_config_fails_before_any_job_naming_the_key(case: str, tmp_path: Path) -> None:
    mutate, culprit = BAD[case]
    result = snakemake_dry_run(mutate(smoke()), tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert culprit in output, output[-2000:]
    assert "Job stats" not in output  # stopped before building the DAG


def test_smoke_config_builds_a_dag(tmp_path: Path) -> None:
    result = snakemake_dry_run(smoke(), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prune" in result.stdout


# --------------------------------------------------------------------------------------------------
# method options and budgets, through the registry (methods.base.check_method_config)

from petlprune.methods import available, get  # noqa: E402
from petlprune.methods.base import Option, OptionError, check_declared, check_method_config  # noqa: E402


def _instances(path: Path):
    cfg = yaml.safe_load(path.read_text())
    for instance, opts in cfg["methods"].items():
        options = {k: v for k, v in opts.items() if k not in ("draws", "method", "petl")}
        yield instance, opts.get("method", instance), options, cfg["budgets"].get(instance, [])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_method_instances_pass_their_declarations(path: Path) -> None:
    for instance, method, options, budgets in _instances(path):
        check_method_config(instance, method, options, budgets)


@pytest.mark.parametrize("method", available())
def test_every_method_refuses_an_unknown_option_naming_the_key(method: str) -> None:
    if not hasattr(get(method), "check_options"):
        pytest.skip(f"{method} has no check_options yet")  # sglp: its own helper adds it (issue 13, item 1)
    with pytest.raises(ValueError, match=r"config key methods\.inst(\.zz_typo)?: .*unknown option.*zz_typo"):
        check_method_config("inst", method, {"zz_typo": 1}, [])


BAD_METHOD_CONFIG = {
    "option typo": ("spa", {"densites": [0.5]}, [], r"methods\.inst\.densites: .*unknown option"),
    "wrong type (bool)": ("pear", {"elementwise": "yes"}, [], r"methods\.inst\.elementwise: .*type bool"),
    "wrong type (int)": ("depgraph", {"batches": 2.5}, [], r"methods\.inst\.batches: .*type int"),
    "bool is not an int": ("taylor_layer", {"batches": True}, [], r"methods\.inst\.batches"),
    "value not allowed": ("pear", {"kc": "magic"}, [], r"methods\.inst\.kc: .*one of"),
    "cross-field rule": ("pear", {"share": "none", "kc": "scale"}, [], r"methods\.inst\.kc: .*serving adapter"),
    "option pinned by the variant": ("adapter_drop", {"share": "nearest"}, [], r"methods\.inst\.share: .*is pinned"),
    "out of range": ("pear", {"kd_weight": 1.5}, [], r"methods\.inst\.kd_weight: .*must be in \[0, 1\]"),
    "density off the step grid": ("spa", {"densities": [0.33]}, [], r"methods\.inst\.densities: .*multiple of step"),
    "budget kind (depth for pear)": ("pear", {}, ["d4"], r"budgets\.inst: method 'pear' takes ratio .*'d4'"),
    "budget kind (matched for spa)": ("spa", {}, ["matched"], r"budgets\.inst: .*'matched' is a depth"),
    "density not scheduled (spa)": ("spa", {"densities": [0.5]}, ["p0.3"], r"budgets\.inst: .*no masks for p0\.3"),
    "density not scheduled (spa_block)": ("spa_block", {"densities": [0.5]}, ["p0.3"], r"budgets\.inst: .*p0\.3"),
    "sls option value": ("sls", {"space": "umap"}, [], r"methods\.inst\.space: .*one of"),
}


@pytest.mark.parametrize("case", list(BAD_METHOD_CONFIG), ids=list(BAD_METHOD_CONFIG))
def test_bad_method_config_names_the_key(case: str) -> None:
    method, options, budgets, message = BAD_METHOD_CONFIG[case]
    with pytest.raises(ValueError, match=message):
        check_method_config("inst", method, options, budgets)


def test_declared_options_fill_defaults_and_accept_null_only_when_nullable() -> None:
    specs = (Option("n", "int", 3, minimum=1), Option("b", "int", None, nullable=True, minimum=1))
    assert check_declared("m", specs, {}) == {"n": 3, "b": None}
    assert check_declared("m", specs, {"n": 5, "b": None}) == {"n": 5, "b": None}
    with pytest.raises(OptionError, match="option 'n' must be of type int, got None") as info:
        check_declared("m", specs, {"n": None})
    assert info.value.option == "n"
    with pytest.raises(OptionError, match=r"option 'n' must be >= 1, got 0"):
        check_declared("m", specs, {"n": 0})


def test_matched_alpha_must_be_an_sls_budget(tmp_path: Path) -> None:
    result = snakemake_dry_run(_set(smoke(), "matched_alpha", "a0.5"), tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "config key matched_alpha: 'a0.5' is not an SLS budget" in output, output[-2000:]


def test_matched_budgets_need_matched_alpha(tmp_path: Path) -> None:
    cfg = smoke()
    del cfg["matched_alpha"]
    result = snakemake_dry_run(cfg, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert re.search(r"config key matched_alpha: budgets\.\w+ uses 'matched'; name the SLS alpha", output), output[-2000:]


def test_per_petl_recipe_overrides_only_that_petl(tmp_path: Path) -> None:
    cfg = _set(smoke(), "petl.recipes", {"splora": {"finetune": {"lr": 0.0123}, "retrain": {"epochs": 7}}})
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--nolock", "--cores", "1", "--configfile", str(cfg_path),
         "--directory", str(ROOT), "-s", str(ROOT / "Snakefile")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    commands = [line for line in result.stdout.splitlines() if "petlprune " in line]  # "Shell command: ..."
    finetune = {p: [c for c in commands if "petlprune finetune" in c and f"--petl {p} " in c]
                for p in ("adapter", "splora")}
    assert finetune["splora"] and all('"lr": 0.0123' in c for c in finetune["splora"])
    assert finetune["adapter"] and not any("0.0123" in c for c in finetune["adapter"])
    prune = [c for c in commands if "petlprune prune" in c]
    splora_runs = [c for c in prune if "/splora/" in c]
    assert splora_runs and all('"epochs": 7' in c for c in splora_runs)
    assert not any('"epochs": 7' in c for c in prune if "/adapter/" in c)


@pytest.mark.parametrize("recipes, culprit", [
    ({"splora": {"finetune": {"lrr": 0.01}}}, "lrr"),
    ({"splora": {"finetune": {"lr": "fast"}}}, "fast"),
    ({"convpass": {"finetune": {"lr": 0.01}}}, "config key petl.recipes.convpass"),  # smoke fine-tunes adapter, splora, splopa, lora
], ids=["typo", "wrong type", "petl never fine-tuned"])
def test_bad_per_petl_recipe_names_the_key(recipes, culprit, tmp_path: Path) -> None:
    result = snakemake_dry_run(_set(smoke(), "petl.recipes", recipes), tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and culprit in output, output[-2000:]
    assert "Job stats" not in output


# --------------------------------------------------------------------------------------------------
# the full tier's controls reach its summary table (the full tier itself is hours on 2 cores)

FULL_CONTROLS = {  # instance -> (PETL it prunes, its budgets in full.yaml)
    "spa_recovered": ("splora", ["p0.5", "p0.3", "p0.1"]),
    "splora_unpruned": ("splora", ["d12"]),
    "pear_nn_scale": (None, ["r0.5", "r0.75"]),
}


def test_full_tier_summary_takes_every_control_at_every_budget(tmp_path: Path) -> None:
    full = yaml.safe_load((ROOT / "workflow/config/full.yaml").read_text())
    for instance, (petl, budgets) in FULL_CONTROLS.items():
        assert full["budgets"][instance] == budgets, instance
        assert full["methods"][instance].get("petl") == petl, instance
    assert full["methods"]["spa_recovered"]["keep_recovered"] is True
    # One task and one seed: the same rules, a DAG that a dry run builds in seconds.
    cfg = {**full, "seeds": [0], "data": {**full["data"], "tasks": ["digits"]}, "results": str(tmp_path / "r")}
    result = snakemake_dry_run(cfg, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    block = result.stdout.split("rule summary:", 1)[1].split("\n\n", 1)[0]
    summary_inputs = {p.strip() for p in block.split("input:", 1)[1].split("\n", 1)[0].split(",")}
    for instance, (petl, budgets) in FULL_CONTROLS.items():
        for p in [petl] if petl else full["petl"]["methods"]:
            for budget in budgets:
                metrics = f"{tmp_path}/r/runs/digits/{p}/seed0/pruned/{instance}-{budget}/metrics.json"
                assert metrics in summary_inputs, metrics
