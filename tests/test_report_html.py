"""The built-page check: forbidden words in cell outputs and stderr blocks are found, prose is not."""

from __future__ import annotations

import pytest

from petlprune.report.htmlcheck import book_problems, main, page_problems

CLEAN = """<html><body><p>A Warning in prose is fine: Error bars are explained here.</p>
<div class="cell docutils container"><div class="cell_output docutils container">
<div class="output text_markdown"><table><tr><td>76.9 ±2.6</td></tr></table></div></div></div></body></html>"""
WARNED = """<html><body><div class="cell_output docutils container"><div class="output stderr highlight-myst-ansi">
<pre>/x/load.py:12: UserWarning: results/runs/a: no metrics.json</pre></div></div></body></html>"""
TRACE = """<html><body><div class="cell_output"><div class="output traceback"><pre>Traceback (most recent call last)
<br/>ValueError: boom</pre></div></div></body></html>"""


def test_prose_passes_outputs_fail():
    assert page_problems(CLEAN) == []
    warned = page_problems(WARNED)
    assert len(warned) == 2 and "UserWarning: results/runs/a" in warned[0] and warned[1] == "1 stderr output block(s)"
    trace = page_problems(TRACE)
    assert len(trace) == 2 and "Traceback (most recent" in trace[0] and "ValueError: boom" in trace[1]


def test_book_check_over_a_folder(tmp_path, capsys):
    (tmp_path / "a.html").write_text(CLEAN)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.html").write_text(TRACE)
    assert list(book_problems(tmp_path)) == ["sub/b.html"]
    assert main([str(tmp_path)]) == 1 and "2 pages checked, 1 with" in capsys.readouterr().out
    (tmp_path / "sub" / "b.html").write_text(CLEAN)
    assert main([str(tmp_path)]) == 0
    with pytest.raises(FileNotFoundError, match="no built HTML"):
        book_problems(tmp_path / "none")
