"""Check a built book for warning, traceback or error text outside the prose.

Prose is the hand-written and generated Markdown of a page; what a notebook cell printed (its
outputs) is not. A built page must show no ``Warning``, ``Traceback`` or ``Error`` in a cell output
and no stderr stream at all: a notebook states an expected condition as a sentence instead.

Usage: ``python -m petlprune.report.htmlcheck book/_build/html`` (exit status 1 when a page fails).
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

__all__ = ["FORBIDDEN", "page_problems", "book_problems", "main"]

FORBIDDEN = re.compile(r"Warning|Traceback|Error")  # also inside UserWarning, ValueError
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Outputs(HTMLParser):
    """Collects the text inside cell outputs (class ``cell_output`` / ``output``) and stderr blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[bool] = []  # per open element: is it (inside) an output?
        self.texts: list[str] = []
        self.stderr = 0

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        inside = bool(self.stack and self.stack[-1]) or any(c in ("cell_output", "output") for c in classes)
        if "stderr" in classes:
            self.stderr += 1
        self.stack.append(inside)

    def handle_endtag(self, tag):
        if tag not in _VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1]:
            self.texts.append(data)


def page_problems(html: str) -> list[str]:
    """What is wrong with one page: each forbidden word in a cell output (with context), stderr blocks."""
    parser = _Outputs()
    parser.feed(html)
    text = " ".join(parser.texts)
    problems = [f"cell output: ...{text[max(0, m.start() - 60):m.end() + 60].strip()}..."
                for m in FORBIDDEN.finditer(text)]
    if parser.stderr:
        problems.append(f"{parser.stderr} stderr output block(s)")
    return problems


def book_problems(html_dir: str | Path) -> dict[str, list[str]]:
    """Every page of a built book (``_build/html``) with its problems; pages without any are left out."""
    html_dir = Path(html_dir)
    pages = sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)
    if not pages:
        raise FileNotFoundError(f"{html_dir}: no built HTML page (has the book been built?)")
    out = {}
    for page in pages:
        problems = page_problems(page.read_text(errors="replace"))
        if problems:
            out[str(page.relative_to(html_dir))] = problems
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    html_dir = Path(argv[0] if argv else "book/_build/html")
    problems = book_problems(html_dir)
    n = len(list(html_dir.rglob("*.html")))
    for page, items in problems.items():
        for item in items:
            print(f"{page}: {item}")
    print(f"{html_dir}: {n} pages checked, {len(problems)} with warning/traceback/error text or stderr")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
