"""Assemble the generated part of the jupyter-book (``book/generated/``) from the results tree.

The hand-written pages and ``_toc.yml`` live in ``book/``; the TOC reaches the generated pages
through glob entries, so the set of tasks and results comes from what the DAG produced:
```
generated/summary.ipynb                 results/notebooks/summary.ipynb
generated/claims.ipynb                  results/notebooks/claims.ipynb (the verdict of each claim)
generated/tasks/{task}.ipynb            results/notebooks/{task}.ipynb
generated/results/{task}/{NN}-{method}.ipynb   results/notebooks/{task}/{method}.ipynb (NN: table order)
generated/data.md, gallery.png          task table from results/data/*/meta.json, the data gallery
generated/backbone.md, backbone_curve.png   the backbone's source, top-1 and pretraining curve
generated/provenance.md, rulegraph.png  commits, versions, devices, config, rule graph
generated/benchmarks.md                 results/benchmarks-suite/*.json (benchmarks/*.py; absent: how to run)
```
The folder is rebuilt from scratch in a sibling temporary folder and swapped in, so a failed
assembly never leaves a half-written book.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nbformat
import pandas as pd

from petlprune.io import read_json
from petlprune.report.backbone_section import backbone_page
from petlprune.report.benchmarks import benchmarks_page
from petlprune.report.load import collect_provenance
from petlprune.report.rulegraph import parse_rulegraph, rulegraph_figure
from petlprune.report.tables import METHOD_ORDER, method_label, to_markdown

__all__ = ["BookError", "assemble_book", "prepare_notebook", "data_page", "provenance_page"]

GENERATED = "generated"
_SPLITS = ("train800", "val200", "train800val200", "test")


class BookError(RuntimeError):
    """The results tree cannot make a book (a notebook missing or executed with errors)."""


def _add_tags(cell: nbformat.NotebookNode, *tags: str) -> None:
    cell.metadata["tags"] = list(dict.fromkeys([*cell.metadata.get("tags", []), *tags]))


def prepare_notebook(src: Path, dst: Path, title: str | None) -> None:
    """Copy an executed notebook into the book: set its page title, fold its parameter cells.

    Args:
        src: executed notebook (papermill output).
        dst: destination in ``book/generated``.
        title: the page title (``# title`` replaces the first heading), or None to keep it.

    Raises:
        BookError: the notebook holds an error output (papermill would have failed the job).
    """
    try:
        nb = nbformat.read(src, as_version=4)
    except Exception as err:  # nbformat raises several unrelated types for a broken file
        raise BookError(f"{src}: not a readable notebook ({err})") from None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            raise BookError(f"{src}: cell {i} was executed with an error; re-run its notebook rule")
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags:
            _add_tags(cell, "remove-cell")  # template defaults, overridden below
        elif "injected-parameters" in tags:
            _add_tags(cell, "hide-cell")  # the parameters this page was made with, one click away
    if title is not None:
        first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
        if first is not None and first.source.lstrip().startswith("# "):
            lines = first.source.lstrip().splitlines()
            first.source = "\n".join([f"# {title}", *lines[1:]])
        else:
            nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {title}"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)


def _result_filename(method: str) -> str:
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return f"{rank:02d}-{method}.ipynb"


def data_page(results_dir: Path, out_dir: Path) -> str:
    """Markdown for the data page: one row per task (from meta.json) and the gallery if drawn."""
    rows = []
    for meta_path in sorted((results_dir / "data").glob("*/meta.json")):
        meta = read_json(meta_path)
        counts = meta.get("counts") or {}
        try:
            rows.append({
                "task": meta["name"],
                "kind": meta.get("kind", ""),
                "classes": meta["num_classes"],
                "image size": meta.get("image_size", ""),
                **{s: counts.get(s, "—") for s in _SPLITS},
                "description": str(meta.get("description", "")).replace("|", "/").replace("\n", " "),
            })
        except KeyError as err:
            raise BookError(f"{meta_path}: missing key {err}") from None
    parts = []
    if rows:
        parts.append(to_markdown(pd.DataFrame(rows)))
    else:
        parts.append("No task folder with a `meta.json` was found in the results tree.")
    gallery = results_dir / "data" / "gallery.png"
    if gallery.is_file():
        shutil.copyfile(gallery, out_dir / "gallery.png")
        # Markdown image syntax: the including page's :relative-images: rewrites it (not {figure})
        parts.append("![samples of every task](gallery.png)\n\nSamples of every task, drawn by the `gallery` stage.")
    return "\n\n".join(parts) + "\n"


def _value_counts_table(prov: pd.DataFrame, columns: Sequence[str]) -> str:
    counts = prov.groupby(list(columns), dropna=False).size().reset_index(name="result files")
    return to_markdown(counts.astype(str))


def provenance_page(
    results_dir: Path,
    out_dir: Path,
    configs: Sequence[Path] = (),
    rulegraph: Path | None = None,
    effective_config: dict | None = None,
) -> str:
    """Markdown for the reproducibility page: commits, versions and devices of every result, the
    configuration (as run, and the files), and the workflow's rule graph."""
    parts = []
    prov = collect_provenance(results_dir)
    if prov.empty:
        parts.append("No `metrics.json` with provenance was found.")
    else:
        parts.append("## Code and machines\n\nEvery `metrics.json` records the commit it was made "
                     "with; the table counts result files per commit, dirty flag, device and thread count.")
        parts.append(_value_counts_table(prov, ["git_commit", "git_dirty", "device", "threads"]))
        version_cols = [c for c in prov.columns if c.startswith("version:")]
        if version_cols:
            versions = pd.DataFrame([
                {"package": c.removeprefix("version:"),
                 "version(s)": ", ".join(sorted(map(str, prov[c].dropna().unique()))) or "—"}
                for c in version_cols
            ])
            mixed = any(prov[c].nunique() > 1 for c in version_cols)
            parts.append("## Package versions\n\nAs recorded at run time"
                         + (" (several values in a row: the results mix environments)." if mixed else "."))
            parts.append(to_markdown(versions))
        wall, memory = prov["wall_seconds"].sum(min_count=1), prov["peak_memory_mb"].max()
        if not pd.isna(wall):
            parts.append("## Cost of the study\n\nWall time of the fine-tuning and pruning jobs (those that "
                         f"write a `metrics.json`), summed: {wall / 60:.1f} min"
                         + (f"; largest peak memory: {memory:.0f} MB." if not pd.isna(memory) else "."))
    if effective_config is not None:
        import yaml

        text = yaml.safe_dump(effective_config, sort_keys=False, allow_unicode=True).rstrip()
        parts.append("## Configuration as run\n\nThe validated configuration the workflow ran with "
                     f"(config files and command-line overrides merged).\n\n````yaml\n{text}\n````")
    for config in configs:
        config = Path(config)
        if not config.is_file():
            raise BookError(f"{config}: config file not found")
        parts.append(f"## Configuration `{config.name}`\n\n````yaml\n{config.read_text().rstrip()}\n````")
    if rulegraph is not None:
        graph = parse_rulegraph(rulegraph.read_text(), rulegraph)
        rulegraph_figure(graph).savefig(out_dir / "rulegraph.png", dpi=110)
        parts.append("## The workflow\n\n![rule graph](rulegraph.png)\n\nThe Snakemake rules and their "
                     "dependencies (`snakemake --rulegraph`), data flowing left to right.")
    return "\n\n".join(parts) + "\n"


def assemble_book(
    results_dir: str | Path,
    book_dir: str | Path,
    configs: Sequence[str | Path] = (),
    rulegraph: str | Path | None = None,
    effective_config: dict | None = None,
) -> list[Path]:
    """Rebuild ``{book_dir}/generated`` from the executed notebooks and the results tree.

    Args:
        results_dir: the ``results/`` directory.
        book_dir: the jupyter-book source folder (holds ``_toc.yml``).
        configs: config files to show on the reproducibility page.
        effective_config: the configuration as the workflow ran it, shown as YAML.
        rulegraph: ``snakemake --rulegraph`` output, or None to leave the rule graph out.

    Returns:
        The notebooks placed in the book, in TOC order.
    """
    results_dir, book_dir = Path(results_dir), Path(book_dir)
    if not (book_dir / "_toc.yml").is_file():
        raise BookError(f"{book_dir}: not a jupyter-book folder (no _toc.yml)")
    notebooks = results_dir / "notebooks"
    summary = notebooks / "summary.ipynb"
    if not summary.is_file():
        raise BookError(f"{summary}: the summary notebook is missing (it is the book's results page)")
    tmp = Path(tempfile.mkdtemp(prefix=".generated.", dir=book_dir))
    placed = []
    try:
        prepare_notebook(summary, tmp / "summary.ipynb", None)
        placed.append(tmp / "summary.ipynb")
        claims = notebooks / "claims.ipynb"
        if claims.is_file():
            prepare_notebook(claims, tmp / "claims.ipynb", None)
            placed.append(tmp / "claims.ipynb")
        for nb in sorted(notebooks.glob("*.ipynb")):
            if nb.name not in ("summary.ipynb", "claims.ipynb"):
                prepare_notebook(nb, tmp / "tasks" / nb.name, nb.stem)
                placed.append(tmp / "tasks" / nb.name)
        for nb in sorted(notebooks.glob("*/*.ipynb")):
            task, method = nb.parent.name, nb.stem
            dst = tmp / "results" / task / _result_filename(method)
            prepare_notebook(nb, dst, f"{task}: {method_label(method)}")
            placed.append(dst)
        (tmp / "data.md").write_text(data_page(results_dir, tmp))
        (tmp / "backbone.md").write_text(backbone_page(results_dir, tmp))
        (tmp / "provenance.md").write_text(
            provenance_page(results_dir, tmp, [Path(c) for c in configs], Path(rulegraph) if rulegraph else None,
                            effective_config))
        (tmp / "benchmarks.md").write_text(benchmarks_page(results_dir))
        final = book_dir / GENERATED
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return [final / p.relative_to(tmp) for p in placed]
