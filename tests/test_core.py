"""The contract layer (src/petlprune/core/): one budget grammar, one Plan rule, declared PETL options, and
the schema and the workflow reading the same facts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from petlprune.core.backbone import check_backbone_shape
from petlprune.core.budgets import BUDGET_PATTERN, Budget, budget_family, budget_order, check_budget_bounds
from petlprune.core.formats import Plan, check_plan
from petlprune.core.options import OptionError
from petlprune.core.petl import PETL_NAMES, check_petl_options, petl_defaults

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())


def test_schema_budget_pattern_is_the_core_grammar() -> None:
    assert SCHEMA["$defs"]["budget"]["pattern"] == f"^({BUDGET_PATTERN})$"


def test_schema_names_match_the_registries() -> None:
    from petlprune.methods import METHOD_MODULES

    assert sorted(SCHEMA["$defs"]["method_name"]["enum"]) == sorted(METHOD_MODULES)
    assert sorted(SCHEMA["$defs"]["petl_name"]["enum"]) == sorted(PETL_NAMES)
    assert sorted(SCHEMA["properties"]["petl"]["properties"]["options"]["properties"]) == sorted(PETL_NAMES)


def test_workflow_wildcard_reads_the_core_grammar() -> None:
    common = (ROOT / "workflow/rules/common.smk").read_text()
    assert "from petlprune.core.budgets import BUDGET_PATTERN as BUDGET_RE" in common
    assert not re.search(r"^BUDGET_RE\s*=", common, re.M), "common.smk writes its own budget grammar again"


@pytest.mark.parametrize("text, kind, value", [("d6", "depth", 6), ("a0.3", "alpha", 0.3), ("r0.5", "ratio", 0.5),
                                                ("p0.25", "density", 0.25), ("k3", "segments", 3.0),
                                                ("matched", "matched", None)])
def test_budget_parse_and_pattern_agree(text: str, kind: str, value) -> None:
    b = Budget.parse(text)
    assert (b.kind, b.value, b.text) == (kind, value, text)
    assert re.fullmatch(BUDGET_PATTERN, text)


@pytest.mark.parametrize("text", ["d0.5", "x3", "half", "d", "matched2"])
def test_pattern_refuses_what_parse_refuses(text: str) -> None:
    assert not re.fullmatch(BUDGET_PATTERN, text)
    if text != "d0.5":  # parse reads d0.5 as a float depth only to refuse it downstream: the pattern stops it
        with pytest.raises(ValueError):
            Budget.parse(text)


def test_budget_order_and_family() -> None:
    texts = ["d3", "p0.5", "a0.5", "matched", "d6", "none", "a0.3"]
    assert sorted(texts, key=budget_order) == ["none", "matched", "a0.3", "a0.5", "d6", "d3", "p0.5"]
    assert [budget_family(t, "a0.3") for t in ("a0.3", "a0.5", "matched", "d3", "r0.5", "p0.5", "k2", "x")] == \
        ["matched", "alpha", "matched", "depth", "ratio", "density", "segments", "x"]


@pytest.mark.parametrize("text, depth, ok", [("d1", 6, True), ("d6", 6, True), ("d7", 6, False), ("d0", 6, False),
                                             ("d40", None, True), ("k7", 6, False), ("r1.0", 6, True),
                                             ("r1.5", 6, False), ("p0", 6, True), ("p1.01", 6, False)])
def test_budget_bounds_against_the_backbone(text: str, depth, ok: bool) -> None:
    if ok:
        check_budget_bounds(Budget.parse(text), depth)
    else:
        with pytest.raises(ValueError, match=re.escape(repr(text))):
            check_budget_bounds(Budget.parse(text), depth)


def test_backbone_shapes_must_divide() -> None:
    check_backbone_shape({"img_size": 32, "patch_size": 8, "embed_dim": 96, "num_heads": 3})
    check_backbone_shape({})  # timm's defaults
    with pytest.raises(ValueError, match="num_heads"):
        check_backbone_shape({"embed_dim": 96, "num_heads": 5})
    with pytest.raises(ValueError, match="patch_size"):
        check_backbone_shape({"img_size": 224, "patch_size": 15})
    with pytest.raises(ValueError, match="depth"):
        check_backbone_shape({"depth": 0})


def test_one_plan_rule_for_the_dataclass_and_the_report(tmp_path: Path) -> None:
    good = {"method": "last_k", "budget": "d2", "depth": 2, "kept_blocks": [0, 1]}
    check_plan(good)
    for bad, key in (({**good, "kept_blocks": [1, 0]}, "kept_blocks"), ({**good, "kept_blocks": [0, 0]}, "kept_blocks"),
                     ({**good, "kept_blocks": [0.0, 1.0]}, "kept_blocks"), ({**good, "depth": -1}, "depth"),
                     ({**good, "depth": "2"}, "depth"), ({"method": "m", "depth": 1}, "kept_blocks")):
        with pytest.raises(ValueError, match=key):
            check_plan(bad)
    with pytest.raises(ValueError, match="kept_blocks"):
        Plan("m", "d2", 2, [1, 0])
    path = tmp_path / "plan.json"
    path.write_text('{"method": "m", "budget": "d2", "depth": -1, "kept_blocks": [0]}')
    with pytest.raises(ValueError, match="depth"):
        Plan.load(path)
    from petlprune.report.load import ResultsError, RunDir  # the report reads it by the same rule

    run = RunDir(tmp_path, "digits", "adapter", 0)
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "m-d2.json").write_text(path.read_text())
    with pytest.raises(ResultsError, match="'depth' must be a non-negative integer"):
        run.plan("m", "d2")


def test_petl_options_defaults_and_checks() -> None:
    defaults = petl_defaults()
    assert set(defaults) == set(PETL_NAMES)
    assert check_petl_options("adapter", {"scale": 1.0}) == {**defaults["adapter"], "scale": 1.0}
    assert check_petl_options("splopa", {"block": 16})["block"] == 16
    for petl, raw, option in (("adapter", {"bottlenek": 4}, "bottlenek"), ("adapter", {"bottleneck": 0}, "bottleneck"),
                              ("lora", {"targets": ["q"]}, "targets"), ("splopa", {"block": "big"}, "block"),
                              ("convpass", {"xavier_init": 1}, "xavier_init")):
        with pytest.raises(OptionError) as info:
            check_petl_options(petl, raw)
        assert info.value.option == option
    with pytest.raises(ValueError, match="unknown PETL method 'prompt'"):
        check_petl_options("prompt", {})
    defaults["lora"]["targets"].append("proj")  # a fresh copy each time: list defaults are not shared
    assert petl_defaults()["lora"]["targets"] == ["qkv"]
