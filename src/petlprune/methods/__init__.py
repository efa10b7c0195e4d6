"""Pruning methods. Importing this package registers every method (one import line per method file)."""

import petlprune.methods.baselines  # noqa: F401
import petlprune.methods.sglp  # noqa: F401
import petlprune.methods.sls  # noqa: F401
from petlprune.methods.base import Budget, Method, Plan, Scores, ScoringContext, available, get, register

__all__ = ["Budget", "Method", "Plan", "Scores", "ScoringContext", "available", "get", "register"]
