"""The book's backbone section: where the backbone came from, its source top-1, its pretraining curve.

Reads ``results/backbone/{name}.json`` (written by ``petlprune pretrain``; for ``weights: bundled`` it
carries the asset's checksum, source top-1 and curve from the asset's provenance JSON) and draws the
curve from it, so the page always shows the backbone the results were computed with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from petlprune.io import read_json
from petlprune.report.style import FIG_WIDTH, styled

__all__ = ["backbone_page", "pretraining_curve"]


@styled
def pretraining_curve(history: list[dict[str, Any]], source_top1: float | None) -> Figure:
    """Training loss and training top-1 per epoch; the held-out source top-1 as a point at the end."""
    fig = Figure(figsize=(FIG_WIDTH, 3.4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    ax_loss.plot(epochs, [row["loss"] for row in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss (label-smoothed CE)", title="loss")
    ax_acc.plot(epochs, [100 * row["train_top1"] for row in history], marker="o", label="train top-1")
    if source_top1 is not None and epochs:
        ax_acc.scatter([epochs[-1]], [100 * source_top1], color="C3", zorder=3, label="held-out top-1")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="source accuracy")
    ax_acc.legend(loc="lower right")
    return fig


def _fmt(value: Any, pattern: str = "{}") -> str:
    return "—" if value is None else pattern.format(value)


def backbone_page(results_dir: Path, out_dir: Path) -> str:
    """Markdown for the backbone part of the data page; draws ``backbone_curve.png`` into ``out_dir``."""
    files = sorted((Path(results_dir) / "backbone").glob("*.json"))
    if not files:
        return "No backbone metrics (`results/backbone/*.json`) were found in the results tree.\n"
    m = read_json(files[0])
    prov = m.get("asset_provenance") or {}
    lines = [
        f"Backbone `{m.get('backbone')}` (`weights: {m.get('weights')}`): {m.get('timm_model')} "
        f"{m.get('timm_kwargs')}, {_fmt(m.get('params'), '{:,}')} parameters.",
        "",
        f"- source: {_fmt(m.get('source_name') or m.get('source'))}, {_fmt(m.get('num_classes'))} classes, "
        f"{_fmt(m.get('n_train'), '{:,}')} training images",
        f"- source held-out top-1: {_fmt(m.get('top1'), '{:.1%}')}",
    ]
    if m.get("weights") == "bundled":
        lines += [
            f"- asset: `{m.get('source')}`, sha256 `{m.get('sha256')}` (verified before any job ran)",
            f"- pretrained at commit `{_fmt(prov.get('git_commit'))}` in "
            f"{_fmt(prov.get('wall_seconds'), '{:.0f}')} s; regenerate with `{_fmt(prov.get('command'))}`",
        ]
    history = m.get("history") or []
    if history:
        fig = pretraining_curve(history, m.get("top1"))
        fig.savefig(Path(out_dir) / "backbone_curve.png", dpi=110)
        lines += ["", "![pretraining curve](backbone_curve.png)", "",
                  "Pretraining curve of this backbone, drawn from its metrics file."]
    return "\n".join(lines) + "\n"
