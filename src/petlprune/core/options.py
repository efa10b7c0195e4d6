"""Declared options: what a method or a PETL accepts, as data, checked before any job runs.

A method declares ``option_specs`` (:class:`DeclaredOptions`, methods/base.py); a PETL's are in
:mod:`petlprune.core.petl`. The workflow checks a config through them when the DAG is parsed
(``workflow/rules/common.smk``), and ``score`` / ``inject_petl`` check the same way when called directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

__all__ = ["Option", "OptionError", "check_declared", "DeclaredOptions"]


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "numbers": lambda v: isinstance(v, (list, tuple)) and len(v) > 0
    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v),
    "mapping": lambda v: isinstance(v, Mapping),
    "strs": lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, str) for x in v),
    "int_or_auto": lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool)),
}
_TYPE_WORDS = {"int_or_auto": "'auto' or an integer"}  # the types a message spells out
_LISTS = ("numbers", "strs")  # choices and bounds apply to each item


class OptionError(ValueError):
    """A bad option; ``option`` names it (the workflow reports ``methods.<instance>.<option>`` or
    ``petl.options.<petl>.<option>``)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Option:
    """One declared method option.

    Args:
        name: the key in the method's config section.
        type: ``int``, ``number``, ``bool``, ``str``, ``numbers`` (a non-empty list of numbers),
            ``strs`` (a non-empty list of strings), ``int_or_auto`` or ``mapping``; ``null`` is accepted only with ``nullable``.
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

    def check(self, method: str, value: Any, what: str = "method") -> None:
        """Raise :class:`OptionError` naming the method (``what``: or the PETL) and option when ``value``
        is not allowed."""
        if value is None and self.nullable:
            return
        where = f"{what} {method!r}: option {self.name!r}"
        if not _TYPE_CHECKS[self.type](value):
            wanted = _TYPE_WORDS.get(self.type, f"of type {self.type}") + (" or null" if self.nullable else "")
            raise OptionError(f"{where} must be {wanted}, got {value!r}", self.name)
        items = value if self.type in _LISTS else [value]
        if self.choices is not None and any(x not in self.choices for x in items):
            each = "each item " if self.type in _LISTS else ""
            raise OptionError(f"{where} {each}must be one of {list(self.choices)}, got {value!r}", self.name)
        low, high = self.minimum, self.maximum
        for x in items:
            if x == "auto" and self.type == "int_or_auto":
                continue
            if low is not None and x < low or high is not None and x > high:
                bound = (f"in [{low:g}, {high:g}]" if low is not None and high is not None
                         else f">= {low:g}" if low is not None else f"<= {high:g}")
                raise OptionError(f"{where} must be {bound}, got {value!r}", self.name)


def check_declared(method: str, specs: Sequence[Option], raw: Mapping[str, Any],
                   fixed: Mapping[str, Any] | None = None, what: str = "method") -> dict[str, Any]:
    """``raw`` over the declared defaults, every value checked; an unknown (or pinned) key is an error.

    Args:
        method: the method name, for messages.
        specs: its declared options.
        raw: the options given (a config section or ``ScoringContext.options``).
        fixed: options the method pins (a registered variant); giving one is an error.
        what: ``method`` or ``petl``, for messages.
    """
    fixed = dict(fixed or {})
    declared = {o.name: o for o in specs}
    allowed = sorted(set(declared) - set(fixed))
    for key in raw:
        if key not in allowed:
            why = f"{key!r} is pinned by {method!r}; " if key in fixed else ""
            raise OptionError(f"{what} {method!r}: unknown option {key!r} ({why}allowed: {', '.join(allowed) or 'none'})",
                              key)
    opts = {**{o.name: o.default for o in specs}, **raw, **fixed}
    for key in raw:
        declared[key].check(method, opts[key], what)
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
