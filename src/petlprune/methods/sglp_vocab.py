"""SGLP's option vocabulary, torch-free and apart from methods/sglp.py, so that the torch halves
(methods/sglp_gradnorm.py, methods/sglp_tokens.py) import it without importing sglp (no import cycle)
and the workflow checks a config without importing torch."""

from __future__ import annotations

__all__ = ["TOKENS", "CONTEXTS", "PICKS"]

TOKENS = ("cls", "all")
CONTEXTS = ("official", "finetuned")
PICKS = ("largest_g", "smallest_g", "lowest_loss")
