"""The one method → (colour, marker) map (petlprune/report/style.py): distinct within every tier."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import pytest
import yaml

from petlprune.report.load import FINETUNE
from petlprune.report.style import FONT, method_style, styled

ROOT = Path(__file__).resolve().parents[1]
TIERS = sorted((ROOT / "workflow/config").glob("*.yaml"))


def tier_methods(path: Path) -> set[str]:
    """Every name a tier's figures can draw: its instances, its budgets' methods and the fine-tune."""
    config = yaml.safe_load(path.read_text())
    return {FINETUNE, *(config.get("methods") or {}), *(config.get("budgets") or {})}


def test_the_tiers_are_found() -> None:
    assert {p.stem for p in TIERS} >= {"smoke", "default", "full", "paper"}


@pytest.mark.parametrize("tier", TIERS, ids=lambda p: p.stem)
def test_every_method_of_a_tier_has_its_own_colour_and_marker(tier: Path) -> None:
    methods = sorted(tier_methods(tier))
    looks: dict[tuple[str, str], str] = {}
    for method in methods:
        look = method_style(method)
        assert look not in looks, f"{tier.name}: {method} and {looks[look]} are both drawn as {look}"
        looks[look] = method
    assert len(looks) == len(methods)


def test_an_instance_keeps_its_family_colour_and_takes_another_marker() -> None:
    colour, marker = method_style("sls")
    assert method_style("sls_raw")[0] == colour and method_style("sls_raw")[1] != marker
    assert method_style("pear_nn_scale")[0] == method_style("pear")[0]
    assert method_style("spa_block") != method_style("spa")  # a registered method, not an instance
    # the same name always gets the same look (figures of different pages agree)
    assert method_style("some_new_instance") == method_style("some_new_instance")


def test_registered_methods_never_share_a_colour() -> None:
    from petlprune.report.style import METHOD_STYLE

    colours = [c for c, _ in METHOD_STYLE.values()]
    markers = [m for _, m in METHOD_STYLE.values()]
    assert len(set(colours)) == len(colours) and len(set(markers)) == len(markers)


def test_styled_figures_get_the_book_sizes_whatever_the_callers_rc() -> None:
    from matplotlib.figure import Figure

    @styled
    def draw() -> Figure:
        fig = Figure()
        ax = fig.subplots()
        ax.set_xlabel("x")
        return fig

    with mpl.rc_context({"font.size": 6, "axes.labelsize": 6}):
        fig = draw()
    assert fig.axes[0].xaxis.label.get_fontsize() == FONT
