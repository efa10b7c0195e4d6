"""The claims the Claims page judges: the arms (a method instance at a budget kind), parts and claims.

:mod:`petlprune.report.claims` measures them on the results tree; it re-exports these names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import pandas as pd

from petlprune.report.load import FINETUNE
from petlprune.report.tables import retrained_reference

__all__ = ["Arm", "Part", "Claim", "CLAIMS", "LAYER_SELECTORS", "FIXED_DEPTH", "fixed_depth", "reference_rows"]

LAYER_SELECTORS = ("sls", "last_k", "random", "block_influence", "angular", "taylor_layer")
FIXED_DEPTH = "d"  # budget kind of an Arm: every fixed depth ``d{K}`` that prunes (K below the unpruned depth)
_FIXED_RE = re.compile(r"^d(\d+)$")


def fixed_depth(budget: object) -> int | None:
    """The K of a fixed-depth budget ``d{K}`` (``d6`` → 6), else None (``matched``, ``a0.3``, ``d`` ...)."""
    m = _FIXED_RE.match(budget) if isinstance(budget, str) else None
    return int(m[1]) if m else None


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a method instance at a budget kind, optionally filtered further.

    Args:
        label: how the page names the arm.
        method: instance name in the tidy table (``method`` column).
        budget: a budget (``matched``, ``d6``: exactly that one), ``alpha`` (SLS at ``matched_alpha``),
            :data:`FIXED_DEPTH` (every ``d{K}`` below the unpruned depth; :meth:`at` picks one, its label
            ending in ``(dK)``), or a budget prefix (``p``, ``r``).
        where: an extra row filter (e.g. Pear's knowledge checkpoint), or None.
        tier_test: does a tier's config ``{"methods", "budgets"}`` run this arm?
    """

    label: str
    method: str
    budget: str
    where: Callable[[pd.DataFrame], pd.Series] | None = None
    tier_test: Callable[[Mapping], bool] | None = None

    def rows(self, df: pd.DataFrame, matched_alpha: str) -> pd.DataFrame:
        """The rows of this arm in the tidy table ``df``."""
        if self.method == FINETUNE:
            return reference_rows(df)
        if self.method == "pear" and "share" in df:
            # every Pear instance (variants have their own names) that shares: its plan says so
            rows = df[df["share"].notna() & (df["share"].astype(str) != "none") & (df["method"] != "adapter_drop")]
        else:
            rows = df[df["method"] == self.method]
        if self.budget == "alpha":
            rows = rows[rows["budget"] == matched_alpha]
        elif self.budget == "matched" or fixed_depth(self.budget) is not None:
            rows = rows[rows["budget"] == self.budget]
        elif self.budget == FIXED_DEPTH:
            # d{full} keeps every block: the unpruned model re-trained (a control), not a selection
            full = df.loc[df["method"] == FINETUNE, "depth"].max()
            ks = pd.Series([fixed_depth(b) for b in rows["budget"]], index=rows.index, dtype=float)
            rows = rows[ks.notna() & ~(ks >= full)]
        else:
            rows = rows[rows["budget"].str.startswith(self.budget)]
        return rows[self.where(rows)] if self.where is not None and not rows.empty else rows

    def in_tier(self, tier: Mapping) -> bool:
        if self.method == FINETUNE:
            return True
        if self.tier_test is not None:
            return self.tier_test(tier)
        budgets = (tier.get("budgets") or {}).get(self.method) or []
        if self.budget == FIXED_DEPTH:  # a tier's config does not say its backbone's depth: any d{K}
            return any(fixed_depth(b) is not None for b in budgets)
        kind = "a" if self.budget == "alpha" else self.budget
        exact = kind == "matched" or fixed_depth(kind) is not None
        return any(b == kind or (not exact and b.startswith(kind)) for b in budgets)

    def at(self, budget: str) -> Arm:
        """This fixed-depth arm at one depth ``budget`` (``d6``), its label naming it."""
        return replace(self, label=self.label.replace("(dK)", f"({budget})"), budget=budget)


def reference_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The unpruned reference of each run (task × PETL × seed), the one place it is chosen.

    The re-trained unpruned model when the tier has one (an instance named ``{petl}_unpruned``, or
    ``last_k`` at the full depth: trained as long as every pruned model), else the fine-tune itself.
    """
    control = retrained_reference(df)
    out = []
    for _, run in df.groupby(["task", "petl", "seed"], sort=False):
        retrained = run[control.loc[run.index]]
        out.append(retrained.iloc[:1] if not retrained.empty else run[run["method"] == FINETUNE])
    return pd.concat(out) if out else df.iloc[0:0]


@dataclass(frozen=True)
class Part:
    """One measured part of a claim: ``kind`` accuracy (A − B points), speed (× over B) or storage."""

    kind: str
    a: Arm
    b: Arm
    metric: str = "top1"
    convention: str = ""


@dataclass(frozen=True)
class Claim:
    """A claim and its parts. ``partial``: judged on the parts that ran when some arm is missing (a claim
    against several alternatives, each a comparison of its own), not "not run" for one missing arm."""

    id: str
    text: str
    parts: tuple[Part, ...]
    partial: bool = False


def _kc(value: str, negate: bool = False) -> Callable[[pd.DataFrame], pd.Series]:
    def where(rows: pd.DataFrame) -> pd.Series:
        kc = rows["kc"] if "kc" in rows else pd.Series("", index=rows.index)
        hit = kc.fillna("none").astype(str) == value
        return ~hit if negate else hit
    return where


def _sharing_alone_if_run(rows: pd.DataFrame) -> pd.Series:
    """Pear-1's arm: the sharing-only variant (kc none) where the tier runs it, else every sharing variant
    (the paper's Pear: sharing with its knowledge checkpoint)."""
    alone = _kc("none")(rows)
    return alone if alone.any() else pd.Series(True, index=rows.index)


def _pear_tier(kc_none: bool) -> Callable[[Mapping], bool]:
    def test(tier: Mapping) -> bool:
        for name, opts in (tier.get("methods") or {}).items():
            if (opts or {}).get("method", name) == "pear" and name in (tier.get("budgets") or {}):
                if (str((opts or {}).get("kc", "none")) == "none") == kc_none:
                    return True
        return False
    return test


SLS = Arm("SLS at matched_alpha", "sls", "alpha")
DEPGRAPH = Arm("DepGraph (matched)", "depgraph", "matched")
SGLP = Arm("SGLP (matched)", "sglp", "matched")
SGLP_FIXED = Arm("SGLP (dK)", "sglp", FIXED_DEPTH)
PEAR = Arm("Pear (sharing; kc none where run)", "pear", "r", _sharing_alone_if_run, lambda t: _pear_tier(True)(t) or _pear_tier(False)(t))
PEAR_SHARE = Arm("Pear (sharing alone, kc none)", "pear", "r", _kc("none"), _pear_tier(True))
PEAR_KC = Arm("Pear (sharing + knowledge checkpoint)", "pear", "r", _kc("none", negate=True), _pear_tier(False))
SPA = Arm("channel-SPA", "spa", "p")
REFERENCE = Arm("unpruned (same PETL)", FINETUNE, "none")

CLAIMS: tuple[Claim, ...] = (
    Claim("SLS-1", "At equal forward parameters, SLS's model is at least as accurate as DepGraph's and "
          "measurably faster.", (Part("accuracy", SLS, DEPGRAPH), Part("speed", SLS, DEPGRAPH))),
    Claim("SLS-2", "At SLS's depth, keeping the first blocks is at least as accurate as choosing blocks by "
          "importance (block influence, angular, Taylor, SGLP).",
          tuple(Part("accuracy", SLS, Arm(f"{m} (matched)", m, "matched"))
                for m in ("block_influence", "angular", "taylor_layer", "sglp")), partial=True),
    Claim("SLS-3", "SLS stores fewer parameters per task than width pruning (under both storage conventions).",
          (Part("storage", SLS, DEPGRAPH, "params_stored", "what a task keeps"),
           Part("storage", SLS, DEPGRAPH, "params_stored_model", "stored as a model"))),
    # Equal depth twice: SLS's depth (matched) and every fixed depth dK the tier runs SGLP at. last_k is
    # left out at matched: it keeps SLS's first blocks there, the same plan as SLS (compared already).
    Claim("SGLP-1", "At equal depth, SGLP is more accurate than the other layer-selection methods.",
          tuple(Part("accuracy", SGLP, SLS if m == "sls" else Arm(f"{m} (matched)", m, "matched"))
                for m in LAYER_SELECTORS if m != "last_k")
          + tuple(Part("accuracy", SGLP_FIXED, Arm(f"{m} (dK)", m, FIXED_DEPTH))
                  for m in LAYER_SELECTORS if m != "sls"), partial=True),
    Claim("Pear-1", "At equal stored parameters, sharing kept adapters into pruned positions beats dropping them.",
          (Part("accuracy", PEAR, Arm("adapter drop", "adapter_drop", "r")),)),
    Claim("Pear-2", "The knowledge checkpoint improves on sharing alone.", (Part("accuracy", PEAR_KC, PEAR_SHARE),)),
    Claim("SPA-1", "At equal density, channel-SPA is more accurate than fine-pruning while storing fewer "
          "parameters (the paper: +6.9 points on average at 10% density, about half the parameters).",
          (Part("accuracy", SPA, Arm("fine-pruning", "fine_pruning", "p")),
           Part("storage", SPA, Arm("fine-pruning", "fine_pruning", "p"), "params_stored", "what a task keeps"))),
    Claim("SPA-2", "The channel-pruned model is measurably faster than the unpruned adapted model.",
          (Part("speed", SPA, REFERENCE),)),
)

# ---------------------------------------------------------------------------------- issue 25's claims
# The field's newest baselines (book/methods/last_k.md, p3b.md, toast.md, attn_drop.md, lora_drop.md).
LAST_K_FIXED = Arm("last_k (dK)", "last_k", FIXED_DEPTH)
LAST_K_D6 = Arm("last_k, adapters-only recovery (d6)", "last_k", "d6")
LAST_K_REC2 = Arm("last_k, recovery adapters+last2 (d6)", "last_k_rec2", "d6")
ATTN_DROP = "attn_drop"

CLAIMS += (
    Claim("LU-1", "At equal depth, keeping the first blocks (last-k) is at least as accurate as every "
          "metric-based selector (block influence, angular, Taylor, SGLP, P3B's block benefit).",
          tuple(Part("accuracy", LAST_K_FIXED, Arm(f"{m} (dK)", m, FIXED_DEPTH))
                for m in ("block_influence", "angular", "taylor_layer", "sglp", "p3b")), partial=True),
    # The storage part states the cost: A (adapters only) over B (recovered) is what a task saves by not
    # recovering; it is a win whenever recovery stores more, so it never makes the claim hold by itself.
    Claim("LU-2", "Recovering the last kept blocks' weights (adapters+last2) beats adapter-only recovery, "
          "at the storage it costs (stored parameters per task, adapters-only / recovered).",
          (Part("accuracy", LAST_K_REC2, LAST_K_D6),
           Part("storage", LAST_K_D6, LAST_K_REC2, "params_stored", "what a task keeps"))),
    Claim("TOAST-1", "At equal depth, a least-squares linear bridge over the removed blocks beats plain removal.",
          (Part("accuracy", Arm("last_k + linear bridge (dK)", "last_k_bridge", FIXED_DEPTH), LAST_K_FIXED),
           Part("accuracy", Arm("P3B + linear bridge (dK)", "p3b_bridge", FIXED_DEPTH),
                Arm("p3b (dK)", "p3b", FIXED_DEPTH))), partial=True),
    Claim("DROP-1", "At about equal speed-up (equal FLOPs removed: 8 attention sub-layers ~ 3 blocks, 12 ~ 4), "
          "dropping attention sub-layers loses less accuracy than dropping whole blocks (by similarity).",
          (Part("accuracy", Arm("attention drop (s8)", ATTN_DROP, "s8"), Arm("block drop (d9)", "block_drop", "d9")),
           Part("accuracy", Arm("attention drop (s12)", ATTN_DROP, "s12"), Arm("block drop (d8)", "block_drop", "d8"))),
          partial=True),
    Claim("LoRA-drop-1", "At equal stored parameters, sharing one LoRA across the low-importance layers beats "
          "dropping their LoRA.",
          (Part("accuracy", Arm("LoRA-drop (shared)", "lora_drop", "r"), Arm("LoRA dropped", "lora_drop_none", "r")),)),
)
