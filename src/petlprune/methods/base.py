"""The method framework: the Method protocol, its base classes and the registry (Budget, Scores, Plan and
Option are defined torch-free in petlprune.core and re-exported here).

A method is three steps, kept apart as in Torch-Pruning (importance criteria separate from the pruner):
``score`` measures (blocks, adapters or channels), ``plan`` turns scores and a budget into a Plan
(the pruning decision and nothing else), ``apply`` turns a model and a Plan into the pruned model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

# The torch-free contracts (budget grammar, file formats, declared options) live in petlprune.core;
# they are re-exported here, where methods have always imported them from.
from petlprune.core.budgets import KIND_LETTERS as _KIND_LETTERS
from petlprune.core.budgets import Budget
from petlprune.core.formats import Plan, Scores
from petlprune.core.options import DeclaredOptions, Option, OptionError, check_declared

__all__ = [
    "Budget",
    "Scores",
    "Plan",
    "ScoringContext",
    "Method",
    "LayerPruningMethod",
    "register",
    "get",
    "available",
    "top_k_blocks",
    "Option",
    "OptionError",
    "DeclaredOptions",
    "check_declared",
    "check_method_config",
    "REMOVAL_OPTIONS",
    "RECOVERY_OPTION",
    "removal_extra",
]

@dataclass
class ScoringContext:
    """Everything ``score`` may use. Methods take what they need and ignore the rest.

    Args:
        model: the fine-tuned PETL model, eval mode.
        features: ``features.npz`` as a mapping: ``cls`` (L, n, d) CLS token of every block output,
            ``embed`` (n, d) the input of the first block, ``labels`` (n,); or None.
        labels: (n,) class labels of those images, or None.
        loader: a DataLoader over training data (for gradient-based criteria), or None.
        device: torch device string.
        seed: the run's seed (random draws, t-SNE).
        options: the method's own config section.
        threads: CPU threads the method may use (e.g. openTSNE's ``n_jobs``).
        num_blocks: the model's depth, given instead of a model to methods that declare ``needs_model
            = False`` (their scores depend on nothing else, so the stage skips building the model).
    """

    model: Any = None
    features: Any = None
    labels: Any = None
    loader: Any = None
    device: str = "cpu"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    num_blocks: int | None = None


@runtime_checkable
class Method(Protocol):
    """What the stages call. Optional hooks, looked up with ``getattr``: ``check_options(raw) -> dict``
    (every registered method has one: ``DeclaredOptions`` builds it from ``option_specs``; the
    workflow calls it through ``check_method_config`` before any job runs), ``check_budget(budget,
    options)``, ``reshapes_backbone`` (measure's ``params_stored_as_model``), ``deploy``,
    ``mark_trainable``, ``retrain_loss``, ``retrain_config``."""

    name: str
    budget_kinds: tuple[str, ...]
    needs: frozenset[str]  # subset of {"features", "loader"}: what score() reads besides the model

    def score(self, ctx: ScoringContext) -> Scores: ...

    def plan(self, scores: Scores, budget: Budget) -> Plan: ...

    def apply(self, model: Any, plan: Plan) -> Any: ...


def top_k_blocks(values: list[float], k: int) -> list[int]:
    """Indices of the k largest values (ties → the shallower block), ascending."""
    if not 1 <= k <= len(values):
        raise ValueError(f"cannot keep {k} of {len(values)} blocks")
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:k])


class LayerPruningMethod:
    """Base for methods that remove whole blocks: keep the ``depth`` highest-scoring blocks."""

    name: ClassVar[str] = ""
    budget_kinds: ClassVar[tuple[str, ...]] = ("depth",)
    needs: ClassVar[frozenset[str]] = frozenset()

    def score(self, ctx: ScoringContext) -> Scores:  # pragma: no cover - abstract
        raise NotImplementedError

    def plan(self, scores: Scores, budget: Budget) -> Plan:
        if budget.kind not in self.budget_kinds:
            raise ValueError(f"method {self.name!r} does not take a {budget.kind} budget ({budget.text})")
        kept = top_k_blocks(scores.values, int(budget.value))
        return Plan(self.name, budget.text, len(kept), kept, scores=list(scores.values),
                    decision_seconds=scores.seconds, extra=_removal_plan_extra(scores, len(kept)))

    def apply(self, model: Any, plan: Plan) -> Any:
        """Keep the plan's blocks; then, if its options say so, bridge each removed span (TOAST) and
        make the last kept blocks' weights task weights (recovery ``adapters+last{n}``)."""
        from petlprune.models.surgery import keep_blocks, recover_blocks

        total = len(model.blocks)
        model = keep_blocks(model, plan.kept_blocks)
        if plan.extra.get("bridge", "identity") == "linear":
            from petlprune.models.bridge import attach_bridges

            attach_bridges(model, plan.kept_blocks, total)
        if plan.extra.get("recover_last", 0):
            recover_blocks(model, int(plan.extra["recover_last"]))
        return model

    def calibrate(self, model: Any, plan: Plan, dataset: Callable[[], Any], device: Any = "cpu"
                  ) -> Callable[[Any], None] | None:
        """Before ``apply``, on the unpruned model (``stages/prune.py``): fit the linear bridges on the
        first ``bridge_samples`` images of ``dataset()`` (the run's training split, in list order).
        Returns what completes the pruned model after ``apply`` (None: nothing to fit)."""
        if plan.extra.get("bridge", "identity") != "linear":
            return None
        from petlprune.data.vtab import make_loader
        from petlprune.models.bridge import fit_bridges, load_bridge_maps

        total = len(model.blocks)
        maps = fit_bridges(model, plan.kept_blocks, make_loader(dataset(), 100, shuffle=False, seed=0),
                           int(plan.extra.get("bridge_samples", 500)), device)
        model.cpu()
        return lambda pruned: load_bridge_maps(pruned, plan.kept_blocks, total, maps)

    def mark_trainable(self, model: Any, petl: str) -> Any:
        """The shared recipe's task weights (PETL of kept blocks + head, recovered blocks); bridges frozen."""
        from petlprune.models.bridge import freeze_bridges
        from petlprune.models.petl import mark_trainable

        return freeze_bridges(mark_trainable(model, petl))


def removal_extra(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The removal options a method's ``score`` passes on to its plan (through ``Scores.extra``)."""
    return {k: opts[k] for k in ("bridge", "bridge_samples", "recover_last") if k in opts}


def _removal_plan_extra(scores: Scores, depth: int) -> dict[str, Any]:
    extra = removal_extra(scores.extra)
    if extra.get("recover_last", 0) > depth:
        raise ValueError(f"cannot recover the last {extra['recover_last']} blocks of a {depth}-block model")
    return extra


# Options of every layer-removal plan a method opts into (last_k, p3b): TOAST's bridge over each removed
# span and recovery of the last kept blocks' weights (book/methods/toast.md, book/methods/recovery.md).
REMOVAL_OPTIONS = (
    Option("bridge", "str", "identity", choices=("identity", "linear"),
           doc="each removed span: identity (plain removal) or TOAST's least-squares linear map"),
    Option("bridge_samples", "int", 500, minimum=1, doc="training images the linear bridge is fitted on"),
)
RECOVERY_OPTION = Option("recover_last", "int", 0, minimum=0,
                         doc="recovery adapters+last{n}: also re-train (and store) the last n kept blocks")


def check_method_config(instance: str, method: str, options: Mapping[str, Any],
                        budgets: Sequence[str]) -> dict[str, Any]:
    """Check one method instance of a study config before any job runs; return its checked options.

    Calls the method's own ``check_options(raw) -> dict`` (declared options, cross-field rules),
    then checks every budget: its kind against ``budget_kinds`` (``matched`` is a depth) and, where
    the method has one, ``check_budget(budget, options)`` (e.g. SPA: the density must be scheduled).

    Args:
        instance: the instance name under ``methods:`` (a key of the config).
        method: the registered method it runs.
        options: the instance's options as ``score`` receives them.
        budgets: its entry under ``budgets:``.

    Raises:
        ValueError: ``config key methods.<instance>[.<option>]: ...`` or ``config key budgets.<instance>: ...``.
    """
    m = get(method)
    # every method in the registry has one; one without (a method under construction) is not checked
    checker = getattr(m, "check_options", lambda raw: dict(raw))
    try:
        opts = checker(dict(options))
    except OptionError as e:
        key = f"methods.{instance}" + (f".{e.option}" if e.option else "")
        raise ValueError(f"config key {key}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"config key methods.{instance}: {e}") from None
    for text in budgets:
        try:
            budget = Budget.parse(text)
        except ValueError as e:
            raise ValueError(f"config key budgets.{instance}: {e}") from None
        kind = "depth" if budget.kind == "matched" else budget.kind
        if kind not in m.budget_kinds:
            takes = ", ".join(f"{k} ({_KIND_LETTERS[k]}…)" for k in m.budget_kinds)
            raise ValueError(f"config key budgets.{instance}: method {method!r} takes {takes} budgets, "
                             f"not {text!r}" + (" ('matched' is a depth)" if budget.kind == "matched" else ""))
        check_budget = getattr(m, "check_budget", None)
        if check_budget is not None and budget.kind != "matched":
            try:
                check_budget(budget, opts)
            except ValueError as e:
                raise ValueError(f"config key budgets.{instance}: {e}") from None
    return opts



_REGISTRY: dict[str, Method] = {}
# name -> module that registers it: petlprune.methods (its __init__) hands its METHOD_MODULES over with
# use_method_modules, so this module never imports its own package (no import cycle).
_MODULES: dict[str, str] = {}


def use_method_modules(modules: dict[str, str]) -> None:
    """Where ``get`` finds each method that is not registered yet (``petlprune.methods.METHOD_MODULES``)."""
    global _MODULES
    _MODULES = modules


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register one instance of the class under ``name``."""

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return deco


def get(name: str) -> Method:
    """The registered method called ``name`` (its module is imported on first use); an unknown name
    lists the known ones."""
    import importlib

    if name not in _REGISTRY and name in _MODULES:
        importlib.import_module(_MODULES[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(available())}") from None


def available() -> list[str]:
    """Every method name, registered or importable."""
    return sorted(set(_MODULES) | set(_REGISTRY))
