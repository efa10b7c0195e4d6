"""argparse types shared by the stages: explicit arguments with errors that name the culprit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["json_object", "positive_int", "non_negative_int"]


def json_object(text: str) -> dict[str, Any]:
    """argparse type: inline JSON object, or the path of a JSON file holding one."""
    source = "inline JSON"
    if not text.lstrip().startswith("{") and Path(text).is_file():
        source, text = text, Path(text).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{source}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{source}: expected a JSON object, got {type(value).__name__}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value
