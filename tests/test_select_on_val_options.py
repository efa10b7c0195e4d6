"""select_on_val's option searches (issue 29): one SGLP option per row, one PETL option per fine-tune."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _valsearch import load_tier  # noqa: E402
from select_on_val import main, sglp_option_variants  # noqa: E402

DEFAULT = ROOT / "workflow/config/default.yaml"


def test_sglp_option_rows_share_the_tier_row() -> None:
    cfg = load_tier(DEFAULT)
    cuts = sglp_option_variants(cfg, "boundaries", ["exact", "official"])
    tokens = sglp_option_variants(cfg, "tokens", ["all", "cls"])
    assert [v.name for v in cuts] == ["sglp_tier", "sglp_boundaries_official"]
    assert [v.name for v in tokens] == ["sglp_tier", "sglp_tokens_cls"]
    assert cuts[0].options == tokens[0].options  # the same row, so the same steps and folder
    assert cuts[1].options == {**cuts[0].options, "boundaries": "official"}
    assert tokens[1].options["tokens"] == "cls" and cuts[0].options["context"] == "official"


@pytest.mark.parametrize("argv, culprit", [
    (["sglp-option", "--option", "boundaries", "--values", "exact", "foo"], "--option boundaries --values foo: method 'sglp': option 'boundaries' must be one of"),
    (["petl-option", "--petl", "splora", "--option", "inti", "--values", "linear"], "--option inti: not an option of PETL splora"),
])
def test_bad_option_fails_before_anything_runs(argv, culprit, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        main([*argv, "--work", str(tmp_path / "work")])
    assert culprit in str(err.value) + capsys.readouterr().err
    assert not (tmp_path / "work").exists()
