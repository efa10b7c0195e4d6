"""Results tree → tidy tables and figures, used by the notebooks, the ``summary`` and ``book`` stages.

Typical use in a notebook::

    from petlprune import report
    df = report.load_results("results")            # one row per task × petl × seed × method × budget
    agg = report.aggregate(df)                      # mean ± std over seeds and random draws
    report.to_markdown(report.comparison_table(agg))
"""

from petlprune.report import aggregates, leaderboard, ranktest, stats
from petlprune.report.claims import CLAIMS, evaluate_claims, reference_rows
from petlprune.report.figures import (
    AXES,
    accuracy_figure,
    accuracy_vs,
    depth_bars,
    method_color,
    tradeoff_figure,
)
from petlprune.report.load import (
    COLUMNS,
    FINETUNE,
    ResultsError,
    RunDir,
    collect_provenance,
    find_runs,
    load_results,
    log_path,
    ppt,
    read_summary,
    split_key,
    split_result_dir,
    write_summary,
)
from petlprune.report.sections import SECTIONS, block_score_section, method_section, sls_section
from petlprune.report.style import method_style
from petlprune.report.tables import (
    METHOD_LABELS,
    METHOD_ORDER,
    METRICS,
    aggregate,
    budget_family,
    comparison_table,
    fmt_interval,
    matched_rows,
    mean_std,
    method_label,
    pareto_mask,
    rank_table,
    result_table,
    result_tables,
    sort_results,
    to_markdown,
)

__all__ = [
    "AXES", "CLAIMS", "COLUMNS", "FINETUNE", "METHOD_LABELS", "METHOD_ORDER", "METRICS", "SECTIONS",
    "ResultsError", "RunDir",
    "accuracy_figure", "accuracy_vs", "aggregate", "block_score_section", "budget_family",
    "fmt_interval", "method_style", "result_tables",
    "collect_provenance", "comparison_table", "depth_bars", "evaluate_claims", "find_runs", "load_results",
    "log_path", "matched_rows", "mean_std", "reference_rows", "stats", "aggregates", "leaderboard", "ranktest",
    "method_color", "method_label", "method_section", "pareto_mask", "ppt", "rank_table", "read_summary",
    "result_table", "sls_section", "sort_results", "split_key", "split_result_dir", "to_markdown",
    "tradeoff_figure", "write_summary",
]
