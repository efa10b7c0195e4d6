"""Every ``.md`` file a docstring or comment cites is in the repository, so a clone can open it (the
method specifications are book/methods/specs/*.md). Pages the workflow writes (``generated/``) are
named, not cited, and are allowed."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MD = re.compile(r"[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md\b")


def _docs_and_comments(path: Path) -> list[tuple[int, str]]:
    text = path.read_text()
    out = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(text).readline)
           if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((node.body[0].lineno, doc))
    return out


def _resolves(cited: str, source: Path) -> bool:
    if cited.startswith(("generated/", "book/generated/")):
        return True
    return any((base / cited).is_file() for base in (ROOT, ROOT / "book", ROOT / "book" / "methods", source.parent))


def missing_citations(paths: list[Path]) -> list[str]:
    bad = []
    for path in paths:
        for line, text in _docs_and_comments(path):
            for cited in MD.findall(text):
                if not _resolves(cited, path):
                    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
                    bad.append(f"{where}:{line}: {cited}")
    return sorted(bad)


def test_every_cited_md_file_is_in_the_repository() -> None:
    paths = sorted(p for d in ("src", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py"))
    assert len(paths) > 50
    assert missing_citations(paths) == []


def test_the_check_finds_a_citation_outside_the_repository(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text('"""Spec: ``methods/SPA.md``."""\n# see book/methods/sls.md and NOWHERE.md\n')
    assert missing_citations([module]) == ["probe.py:1: methods/SPA.md", "probe.py:2: NOWHERE.md"]


def test_no_test_module_imports_another() -> None:
    """Shared fixtures live in tests/conftest.py and shared helpers in tests/_helpers.py; a test module that
    imports another runs (and collects) the other's module-level code twice under two names."""
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}:{node.lineno}: {n}" for n in names
                    if n.split(".")[0].startswith("test_") or n.split(".")[0] in ("conftest", "tests")]
    assert bad == []
