"""Make ``from rliable import library`` work with pandas 3 (rliable==1.2.0 needs arch<8).

rliable's stratified bootstrap subclasses ``arch.bootstrap.IIDBootstrap`` and passes it
``random_state``, which arch 8 dropped; so rliable needs arch 7.2. arch 7.2, at import, decorates a
method with ``pandas.util._decorators.deprecate_kwarg("type", "plot_type")``: the pandas 1–2 signature
``(old_arg_name, new_arg_name, ...)``. pandas 3 added a required warning class in front,
``(klass, old_arg_name, new_arg_name, ...)``, so that call fails with a TypeError and arch (and
with it rliable) cannot be imported.

:func:`ensure_arch` wraps pandas' ``deprecate_kwarg`` *before arch is first imported* so that a
legacy call (a ``str`` as its first argument) is mapped to ``(FutureWarning, old, new, ...)``; a call
with the new signature passes through unchanged, and on a pandas whose ``deprecate_kwarg`` still takes
the old signature nothing is wrapped at all. :mod:`petlprune.report.aggregates` calls it before its
first rliable import. tests/test_aggregate.py checks both cases.
"""

from __future__ import annotations

import functools
import inspect
import sys

__all__ = ["ensure_arch", "needs_shim", "STATE"]

STATE: dict[str, str] = {}  # "state": "shimmed" | "native" | "already-imported"


def needs_shim(deprecate_kwarg) -> bool:
    """Whether ``deprecate_kwarg`` has pandas 3's signature (a warning class first)."""
    params = list(inspect.signature(deprecate_kwarg).parameters)
    return bool(params) and params[0] == "klass"


def _legacy_compatible(deprecate_kwarg):
    @functools.wraps(deprecate_kwarg)
    def wrapper(*args, **kwargs):
        if args and isinstance(args[0], str):  # the pandas 1–2 call: (old, new, ...)
            return deprecate_kwarg(FutureWarning, *args, **kwargs)
        return deprecate_kwarg(*args, **kwargs)

    wrapper.__petlprune_shim__ = True
    return wrapper


def ensure_arch() -> str:
    """Install the shim if pandas needs it and arch is not imported yet; return the state."""
    if "state" in STATE:
        return STATE["state"]
    from pandas.util import _decorators

    if "arch" in sys.modules and not getattr(_decorators.deprecate_kwarg, "__petlprune_shim__", False):
        STATE["state"] = "already-imported"
    elif needs_shim(_decorators.deprecate_kwarg):
        if not getattr(_decorators.deprecate_kwarg, "__petlprune_shim__", False):
            _decorators.deprecate_kwarg = _legacy_compatible(_decorators.deprecate_kwarg)
        STATE["state"] = "shimmed"
    else:
        STATE["state"] = "native"
    return STATE["state"]
