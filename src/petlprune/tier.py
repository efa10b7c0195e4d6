"""What a tier config (``workflow/config/*.yaml``) means, in one place.

The workflow's rules (``workflow/rules/common.smk``) and the scripts in ``benchmarks/`` that run stages
outside the DAG (``select_on_val.py``) read a tier through these, so a search trains and scores exactly
as the DAG would. Plain dicts in, plain dicts out: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from petlprune.core.backbone import backbone_depth, check_backbone_shape
from petlprune.core.budgets import Budget, check_budget_bounds
from petlprune.core.options import OptionError
from petlprune.core.petl import check_petl_options

__all__ = ["INSTANCE_KEYS", "recipe", "instance_options", "instance_petls", "reference_instances", "check_inputs"]

# Keys of a method instance that the workflow reads (random draws, the registered method, the PETL it
# prunes); every other key is an option of the method.
INSTANCE_KEYS = ("draws", "method", "petl")


def recipe(config: Mapping[str, Any], stage: str, petl: str) -> dict[str, Any]:
    """The training recipe of ``stage`` (``finetune`` or ``retrain``) for ``petl``: the shared one, with
    that PETL's overrides from ``petl.recipes`` on top."""
    own = config["petl"].get("recipes", {}).get(petl, {}).get(stage, {})
    return {**config[stage], **own}


def instance_options(config: Mapping[str, Any], instance: str) -> dict[str, Any]:
    """The method options of a config instance (``methods.<instance>`` without the workflow's keys)."""
    return {k: v for k, v in (config["methods"].get(instance) or {}).items() if k not in INSTANCE_KEYS}


def instance_petls(config: Mapping[str, Any], instance: str) -> list[str]:
    """The PETL runs a method instance prunes: its own ``petl:``, else every PETL of ``petl.methods``."""
    own = (config["methods"].get(instance) or {}).get("petl")
    return [own] if own else list(config["petl"]["methods"])


def reference_instances(config: Mapping[str, Any], petl: str) -> set[str]:
    """The instances whose results are the re-trained unpruned control of ``petl``'s runs: a
    ``{petl}_unpruned`` instance, and ``last_k`` where it has a budget at the backbone's full depth
    (``report.tables.retrained_reference`` is the same rule on results)."""
    depth = (config["backbone"].get("timm_kwargs") or {}).get("depth", 12)
    budgets = config["budgets"]
    names = {m for m in budgets if m == f"{petl}_unpruned" and petl in instance_petls(config, m)}
    if f"d{depth}" in budgets.get("last_k", []) and petl in instance_petls(config, "last_k"):
        names.add("last_k")
    return names


def check_inputs(config: Mapping[str, Any], workdir: str | Path = ".") -> None:
    """What the schema cannot say about a tier, checked before any job runs; ``ValueError`` naming the
    config key: the backbone's shapes divide, every budget fits the backbone's depth, every PETL option
    is declared and in range (core/petl.py), and the checkpoint a config names exists (relative paths
    from ``workdir``, Snakemake's working directory)."""
    backbone = config["backbone"]
    try:
        check_backbone_shape(backbone.get("timm_kwargs"))
    except ValueError as err:
        raise ValueError(f"config key backbone.{err}") from None
    depth = backbone_depth(backbone.get("timm_kwargs"))
    for instance, texts in config.get("budgets", {}).items():
        for text in texts:
            try:
                check_budget_bounds(Budget.parse(text), depth)
            except ValueError as err:
                raise ValueError(f"config key budgets.{instance}: {err}") from None
    for petl, raw in (config["petl"].get("options") or {}).items():
        try:
            check_petl_options(petl, raw or {})
        except OptionError as err:
            raise ValueError(f"config key petl.options.{petl}.{err.option}: {err}") from None
    checkpoint = backbone.get("checkpoint")
    if backbone.get("weights") == "file" and not checkpoint:
        raise ValueError("config key backbone.checkpoint: weights 'file' needs a checkpoint path")
    if checkpoint and not (Path(workdir) / checkpoint).is_file():
        raise ValueError(f"config key backbone.checkpoint: {checkpoint!r} is not a file "
                         f"(relative paths are from the working directory, {Path(workdir).resolve()})")
