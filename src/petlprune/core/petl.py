"""The PETL names and the options each one takes, declared torch-free.

``models/petl.py`` builds its defaults from this table and ``inject_petl`` checks with it; the
workflow checks every ``petl.options.<name>`` of a config with it when the DAG is parsed
(``workflow/rules/common.smk``), so a typo stops ``snakemake -n``, not the fine-tune job.

Adding an option to a PETL is one line in :data:`PETL_OPTIONS` (and its use in the PETL's module);
adding a PETL is one entry here plus its injection (CONTRIBUTING.md, "Layering").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from petlprune.core.options import Option, check_declared

__all__ = ["PETL_OPTIONS", "PETL_NAMES", "LINEAR_TARGETS", "petl_defaults", "check_petl_options"]

# The linear layers of a timm ViT block a PETL may adapt (LoRA's ``targets``, SPLoPA's ``targets``).
LINEAR_TARGETS = ("qkv", "proj", "fc1", "fc2")

PETL_OPTIONS: dict[str, tuple[Option, ...]] = {
    # AdaptFormer (models/petl.py): s * W_up ReLU(W_down LN(h)) on the MLP branch
    "adapter": (
        Option("bottleneck", "int", 8, minimum=1, doc="hidden width of the bottleneck"),
        Option("scale", "number", 0.1, doc="the fixed scalar s"),
        Option("dropout", "number", 0.1, minimum=0, maximum=1, doc="dropout on the bottleneck activations"),
    ),
    "convpass": (
        Option("bottleneck", "int", 8, minimum=1, doc="hidden width of each bypass"),
        Option("scale", "number", 1.0, doc="the fixed scalar s"),
        Option("dropout", "number", 0.1, minimum=0, maximum=1, doc="dropout before W_up"),
        Option("xavier_init", "bool", False, doc="Xavier-initialise the 3x3 conv instead of the identity"),
    ),
    "lora": (
        Option("rank", "int", 8, minimum=1, doc="r"),
        Option("alpha", "number", 8.0, doc="the update is scaled by alpha / r"),
        Option("targets", "strs", ["qkv"], choices=LINEAR_TARGETS, doc="the linear layers adapted"),
    ),
    "linear": (),
    "full": (),
    # SPA (models/splora.py): C, R and bias on qkv, proj, fc1, fc2
    "splora": (
        Option("rank", "int", 4, minimum=1, doc="r of C R"),
        Option("init", "str", "library", choices=("library", "linear"),
               doc="R's Kaiming range: the SPA library's 1/sqrt(r in) or torch.nn.Linear's 1/sqrt(in) (book/methods/spa.md)"),
    ),
    # Block-SPA (models/splopa.py): b x b blocks, K rank-1 prototypes shared per layer shape
    "splopa": (
        Option("block", "int_or_auto", "auto", minimum=1, doc="b, or auto (models/splopa.py: auto_block)"),
        Option("prototypes", "int", 4, minimum=1, doc="K"),
        Option("targets", "strs", list(LINEAR_TARGETS), choices=LINEAR_TARGETS, doc="the linear layers adapted"),
    ),
}
PETL_NAMES: tuple[str, ...] = tuple(PETL_OPTIONS)


def petl_defaults() -> dict[str, dict[str, Any]]:
    """{PETL: {option: default}} (a fresh copy: list defaults are not shared)."""
    return {name: {o.name: (list(o.default) if isinstance(o.default, list) else o.default) for o in specs}
            for name, specs in PETL_OPTIONS.items()}


def check_petl_options(petl: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` over the PETL's defaults, every value checked.

    Raises:
        ValueError: an unknown PETL.
        OptionError: an unknown option, or a value of the wrong type or range (``.option`` names it).
    """
    if petl not in PETL_OPTIONS:
        raise ValueError(f"unknown PETL method {petl!r}; known: {', '.join(PETL_NAMES)}")
    opts = check_declared(petl, PETL_OPTIONS[petl], dict(raw), what="PETL method")
    return {k: list(v) if isinstance(v, list) else v for k, v in opts.items()}  # no shared list defaults
