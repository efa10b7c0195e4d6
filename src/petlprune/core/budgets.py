"""The budget grammar: how a pruning budget is written (config, results tree, tables), parsed, ordered
and grouped. The workflow's wildcard (``workflow/rules/common.smk``) and the config schema's pattern
(``workflow/schemas/config.schema.yaml``, checked equal by ``tests/test_core.py``) are this grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BUDGET_KINDS", "KIND_LETTERS", "BUDGET_PATTERN", "Budget", "budget_family", "budget_order", "check_budget_bounds",
           "budget_kind"]

# letter -> kind. Adding a kind: one line here (the pattern, the schema test and the tables follow).
# s: attention sub-layers removed (attn_drop, book/methods/attn_drop.md)
BUDGET_KINDS: dict[str, str] = {"d": "depth", "a": "alpha", "r": "ratio", "p": "density", "k": "segments",
                                "s": "sublayers"}
KIND_LETTERS: dict[str, str] = {v: k for k, v in BUDGET_KINDS.items()}
# A depth is an integer; every other kind may have a fraction. (Snakemake wildcard and schema pattern.)
BUDGET_PATTERN = "matched|d[0-9]+|[" + "".join(k for k in BUDGET_KINDS if k != "d") + "][0-9]+(\\.[0-9]+)?"
_BUDGET_RE = re.compile(r"^(?:(?P<matched>matched)|(?P<kind>[a-z])(?P<value>\d+(?:\.\d+)?))$")


@dataclass(frozen=True)
class Budget:
    """A pruning budget, written as in the results tree.

    ``matched`` (the depth SLS chose for the same task and seed; resolved by the caller into a
    depth budget), ``d6`` (keep 6 blocks), ``a0.3`` (SLS alpha), ``r0.5`` (Pear: fraction of adapter
    parameters removed), ``p0.3`` (SPA: channel density kept), ``k3`` (segments).
    """

    kind: str
    value: float | int | None
    text: str

    @classmethod
    def parse(cls, text: str) -> Budget:
        m = _BUDGET_RE.match(text)
        if not m:
            raise ValueError(
                f"budget {text!r}: expected 'matched' or a letter + number "
                f"({', '.join(f'{k}=<{v}>' for k, v in BUDGET_KINDS.items())}), e.g. d6, a0.3"
            )
        if m["matched"]:
            return cls("matched", None, text)
        kind = BUDGET_KINDS.get(m["kind"])
        if kind is None:
            raise ValueError(f"budget {text!r}: unknown kind letter {m['kind']!r}")
        value: float | int = int(m["value"]) if kind == "depth" else float(m["value"])
        return cls(kind, value, text)

    @classmethod
    def depth(cls, n: int, text: str | None = None) -> Budget:
        return cls("depth", int(n), text or f"d{int(n)}")


def budget_kind(budget: str) -> str | None:
    """The kind of a budget text (``matched`` for matched), or None if it is not one."""
    try:
        return Budget.parse(budget).kind
    except ValueError:
        return None


def budget_family(budget: str, matched_alpha: str | None = None) -> str:
    """Which budgets are comparable: ``matched`` and SLS's ``matched_alpha`` (the alpha whose depth the
    ``matched`` baselines got) are "matched"; any other alpha is an "alpha" budget of its own; a text
    that is no budget is its own family."""
    if budget == "matched" or (matched_alpha is not None and budget == matched_alpha):
        return "matched"
    m = _BUDGET_RE.match(budget)
    return BUDGET_KINDS.get(m["kind"], budget) if m and m["kind"] else budget


def budget_order(budget: str) -> tuple:
    """Sort key of budgets: none, matched, alphas ascending, depths descending, other kinds."""
    if budget == "none":
        return (0, 0.0)
    if budget == "matched":
        return (1, 0.0)
    m = _BUDGET_RE.match(budget)
    if not m:
        return (9, 0.0, budget)
    letter, value = m["kind"], float(m["value"])
    # alphas ascending; depths descending (cheapest last); other kinds by value
    return ({"a": 2, "d": 3}.get(letter, 4), -value if letter == "d" else value, letter)


def check_budget_bounds(budget: Budget, depth: int | None) -> None:
    """Raise ``ValueError`` when a backbone of ``depth`` blocks (None: unknown) cannot have ``budget``:
    a depth, a segment count or a number of attention sub-layers removed outside 1..depth, a ratio or a density outside [0, 1] (a density of 0
    or a ratio of 1 would leave no adapter parameter; both are kept legal as the extremes of a sweep)."""
    if budget.kind in ("depth", "segments", "sublayers"):
        what = {"depth": "blocks kept", "segments": "segments", "sublayers": "attention sub-layers removed"}[budget.kind]
        if budget.value < 1:
            raise ValueError(f"budget {budget.text!r}: {what} must be at least 1")
        if depth is not None and budget.value > depth:
            raise ValueError(f"budget {budget.text!r}: {budget.value:g} {what}, but the backbone has {depth} blocks")
    elif budget.kind in ("ratio", "density") and not 0 <= budget.value <= 1:
        raise ValueError(f"budget {budget.text!r}: a {budget.kind} is a fraction in [0, 1]")
