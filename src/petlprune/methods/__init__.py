"""Pruning methods. Importing this package registers every method (one import line per method file)."""

from petlprune.methods.base import Budget, Method, Plan, Scores, ScoringContext, available, get, register

__all__ = ["Budget", "Method", "Plan", "Scores", "ScoringContext", "available", "get", "register"]
