"""What a tier config (``workflow/config/*.yaml``) means, in one place.

The workflow's rules (``workflow/rules/common.smk``) and the scripts in ``benchmarks/`` that run stages
outside the DAG (``select_on_val.py``) read a tier through these, so a search trains and scores exactly
as the DAG would. Plain dicts in, plain dicts out: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["INSTANCE_KEYS", "recipe", "instance_options"]

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
