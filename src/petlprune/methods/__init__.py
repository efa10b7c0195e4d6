"""Pruning methods: the framework (``base``) and one file per method.

``METHOD_MODULES`` maps each registered name to the module that registers it; ``get(name)`` imports
only that module, so a job that plans with SLS does not import torch for SGLP. Adding a method: its
file, decorated with ``@register("name")``, and one line here.
"""

from petlprune.methods import base as _base
from petlprune.methods.base import Budget, Method, Plan, Scores, ScoringContext, available, get, register

METHOD_MODULES: dict[str, str] = {
    "sls": "petlprune.methods.sls",
    "last_k": "petlprune.methods.baselines",
    "random": "petlprune.methods.baselines",
    "block_influence": "petlprune.methods.baselines",
    "angular": "petlprune.methods.baselines",
    "taylor_layer": "petlprune.methods.baselines",
    "sglp": "petlprune.methods.sglp",
    "spa": "petlprune.methods.spa",
    "fine_pruning": "petlprune.methods.spa",
    "depgraph": "petlprune.methods.depgraph",
    "spa_block": "petlprune.methods.spa_block",
    "pear": "petlprune.methods.pear",
    "adapter_drop": "petlprune.methods.pear",
    "p3b": "petlprune.methods.p3b",
    "attn_drop": "petlprune.methods.attn_drop",
    "lora_drop": "petlprune.methods.lora_drop",
}
_base.use_method_modules(METHOD_MODULES)  # base finds methods through it, never importing this package

__all__ = ["METHOD_MODULES", "Budget", "Method", "Plan", "Scores", "ScoringContext", "available", "get", "register"]
