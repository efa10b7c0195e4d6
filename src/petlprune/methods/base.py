"""The method framework: Budget, Scores, Plan, the Method protocol and the registry.

A method is three steps, kept apart as in Torch-Pruning (importance criteria separate from the pruner):
``score`` measures (blocks, adapters or channels), ``plan`` turns scores and a budget into a Plan
(the pruning decision and nothing else), ``apply`` turns a model and a Plan into the pruned model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

from petlprune.io import atomic_path, atomic_write_json, read_json

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

_BUDGET_RE = re.compile(r"^(?:(?P<matched>matched)|(?P<kind>[a-z])(?P<value>\d+(?:\.\d+)?))$")
_BUDGET_KINDS = {"d": "depth", "a": "alpha", "r": "ratio", "p": "density", "k": "segments",
                 "s": "sublayers"}  # s: attention sub-layers removed (attn_drop)


@dataclass(frozen=True)
class Budget:
    """A pruning budget, written as in the results tree.

    ``matched`` (the depth SLS chose for the same task and seed; resolved by the caller into a
    depth budget), ``d6`` (keep 6 blocks), ``a0.3`` (SLS alpha), ``r0.5`` (Pear: fraction of adapter
    parameters removed), ``p0.3`` (SPA: channel density kept).
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
                f"({', '.join(f'{k}=<{v}>' for k, v in _BUDGET_KINDS.items())}), e.g. d6, a0.3"
            )
        if m["matched"]:
            return cls("matched", None, text)
        kind = _BUDGET_KINDS[m["kind"]] if m["kind"] in _BUDGET_KINDS else None
        if kind is None:
            raise ValueError(f"budget {text!r}: unknown kind letter {m['kind']!r}")
        value: float | int = int(m["value"]) if kind == "depth" else float(m["value"])
        return cls(kind, value, text)

    @classmethod
    def depth(cls, n: int, text: str | None = None) -> Budget:
        return cls("depth", int(n), text or f"d{int(n)}")


@dataclass
class Scores:
    """What ``score`` measured: one value per unit (block, adapter position, channel group).

    Serialised as ``{"method", "scores", "extra", "seconds"}`` (CONTRIBUTING.md). A value may be
    None for a unit that was not measured (e.g. SLS's early stop). ``arrays`` (named numpy arrays a
    report needs: embeddings, matrices) go to a sidecar ``.npz`` next to the JSON, named in its
    ``"arrays"`` key, and come back with :meth:`load`.
    """

    method: str
    values: list[float | None]
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    arrays: dict[str, Any] = field(default_factory=dict, repr=False)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        data: dict[str, Any] = {"method": self.method, "scores": list(self.values), "extra": self.extra,
                                "seconds": self.seconds}
        if self.arrays:
            import numpy as np

            sidecar = path.with_suffix(".npz")
            with atomic_path(sidecar) as tmp, open(tmp, "wb") as f:
                np.savez(f, **self.arrays)
            data["arrays"] = sidecar.name
        atomic_write_json(path, data)

    @classmethod
    def load(cls, path: str | Path) -> Scores:
        path = Path(path)
        data = read_json(path)
        missing = {"method", "scores"} - set(data)
        if missing:
            raise ValueError(f"{path}: not a scores file, missing key(s) {sorted(missing)}")
        arrays: dict[str, Any] = {}
        if data.get("arrays"):
            import numpy as np

            sidecar = path.parent / data["arrays"]
            if not sidecar.is_file():
                raise FileNotFoundError(f"{path}: its arrays file {sidecar} is missing")
            with np.load(sidecar, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        return cls(data["method"], data["scores"], data.get("extra", {}), data.get("seconds", 0.0), arrays)


@dataclass
class Plan:
    """The pruning decision and nothing else (serialised as JSON in ``plan/{method}-{budget}.json``).

    Args:
        method: registered method name.
        budget: the budget text as requested (``matched`` stays ``matched``).
        depth: number of blocks in the pruned model's forward path.
        kept_blocks: 0-based indices of the kept blocks, ascending.
        sharing: for adapter sharing, {pruned position: serving position}.
        masks: channel masks, or a path to them.
        scores: the scores the decision came from.
        decision_seconds: time spent deciding (scoring + planning).
        notes: anything a reader of the result must know (e.g. an edge case taken).
    """

    method: str
    budget: str
    depth: int
    kept_blocks: list[int]
    sharing: dict[str, int] | None = None
    masks: Any = None
    scores: list[float] | None = None
    decision_seconds: float = 0.0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kept_blocks = [int(i) for i in self.kept_blocks]
        if self.kept_blocks != sorted(set(self.kept_blocks)):
            raise ValueError(f"plan {self.method}: kept_blocks must be ascending and unique: {self.kept_blocks}")

    @property
    def is_prefix(self) -> bool:
        """True when the kept blocks are 0..depth-1: the Plan is then a single integer."""
        return self.kept_blocks == list(range(len(self.kept_blocks)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(read_json(path))

    def __str__(self) -> str:
        return json.dumps(self.to_dict())


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


# ------------------------------------------------------------------------------------ options
# What a method accepts, declared as data (no torch), so that the workflow checks a config before
# any job runs (``check_method_config``) and ``score`` checks the same way when called directly.

_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "numbers": lambda v: isinstance(v, (list, tuple)) and len(v) > 0
    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v),
    "mapping": lambda v: isinstance(v, Mapping),
}


class OptionError(ValueError):
    """A bad method option; ``option`` names it (the workflow reports ``methods.<instance>.<option>``)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Option:
    """One declared method option.

    Args:
        name: the key in the method's config section.
        type: ``int``, ``number``, ``bool``, ``str``, ``numbers`` (a non-empty list of numbers) or
            ``mapping``; ``null`` is accepted only with ``nullable``.
        default: the value when the key is absent.
        choices: the allowed values, if a closed set.
        minimum, maximum: inclusive bounds of a number (or of every item of ``numbers``).
        nullable: ``null`` is a valid value.
        doc: one line for the method's documentation.
    """

    name: str
    type: str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        if self.type not in _TYPE_CHECKS:
            raise ValueError(f"option {self.name!r}: unknown type {self.type!r} (known: {', '.join(_TYPE_CHECKS)})")

    def check(self, method: str, value: Any) -> None:
        """Raise :class:`OptionError` naming the method and option when ``value`` is not allowed."""
        if value is None and self.nullable:
            return
        where = f"method {method!r}: option {self.name!r}"
        if not _TYPE_CHECKS[self.type](value):
            wanted = self.type + (" or null" if self.nullable else "")
            raise OptionError(f"{where} must be of type {wanted}, got {value!r}", self.name)
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"{where} must be one of {list(self.choices)}, got {value!r}", self.name)
        low, high = self.minimum, self.maximum
        for x in (value if self.type == "numbers" else [value]):
            if low is not None and x < low or high is not None and x > high:
                bound = (f"in [{low:g}, {high:g}]" if low is not None and high is not None
                         else f">= {low:g}" if low is not None else f"<= {high:g}")
                raise OptionError(f"{where} must be {bound}, got {value!r}", self.name)


# Options of every layer-removal plan a method opts into (last_k, p3b): TOAST's bridge over each removed
# span and recovery of the last kept blocks' weights (book/methods/toast.md, book/methods/recovery.md).
REMOVAL_OPTIONS = (
    Option("bridge", "str", "identity", choices=("identity", "linear"),
           doc="each removed span: identity (plain removal) or TOAST's least-squares linear map"),
    Option("bridge_samples", "int", 500, minimum=1, doc="training images the linear bridge is fitted on"),
)
RECOVERY_OPTION = Option("recover_last", "int", 0, minimum=0,
                         doc="recovery adapters+last{n}: also re-train (and store) the last n kept blocks")


def check_declared(method: str, specs: Sequence[Option], raw: Mapping[str, Any],
                   fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``raw`` over the declared defaults, every value checked; an unknown (or pinned) key is an error.

    Args:
        method: the method name, for messages.
        specs: its declared options.
        raw: the options given (a config section or ``ScoringContext.options``).
        fixed: options the method pins (a registered variant); giving one is an error.
    """
    fixed = dict(fixed or {})
    declared = {o.name: o for o in specs}
    allowed = sorted(set(declared) - set(fixed))
    for key in raw:
        if key not in allowed:
            why = f"{key!r} is pinned by {method!r}; " if key in fixed else ""
            raise OptionError(f"method {method!r}: unknown option {key!r} ({why}allowed: {', '.join(allowed) or 'none'})",
                              key)
    opts = {**{o.name: o.default for o in specs}, **raw, **fixed}
    for key in raw:
        declared[key].check(method, opts[key])
    return opts


class DeclaredOptions:
    """Mixin: ``check_options`` from the class's ``option_specs`` (and ``fixed_options``).

    A method with cross-field rules overrides ``check_options``, calling ``check_declared`` first.
    """

    name: ClassVar[str] = ""
    option_specs: ClassVar[tuple[Option, ...]] = ()
    fixed_options: ClassVar[dict[str, Any]] = {}

    def check_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The options ``score`` runs with: ``raw`` over the defaults, checked."""
        return check_declared(self.name, self.option_specs, raw, self.fixed_options)


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


_KIND_LETTERS = {v: k for k, v in _BUDGET_KINDS.items()}


_REGISTRY: dict[str, Method] = {}


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

    from petlprune.methods import METHOD_MODULES

    if name not in _REGISTRY and name in METHOD_MODULES:
        importlib.import_module(METHOD_MODULES[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(available())}") from None


def available() -> list[str]:
    """Every method name, registered or importable."""
    from petlprune.methods import METHOD_MODULES

    return sorted(set(METHOD_MODULES) | set(_REGISTRY))
