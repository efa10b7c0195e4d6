"""A bad SLS or SGLP option stops ``snakemake -n`` naming its config key (declared options, methods/base.py).

``methods.sls.alpha`` is checked as written, although the workflow scores SLS at its budgets' lowest
alpha (workflow/rules/common.smk ``method_options``): a typo there must not pass silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _helpers import set_key as _set
from _helpers import smoke, snakemake_dry_run

BAD = {
    "sls alpha not a number": ("methods.sls.alpha", "high", "config key methods.sls.alpha: "),
    "sls negative perplexity": ("methods.sls.perplexity", -5, "config key methods.sls.perplexity: "),
    "sglp unknown boundaries": ("methods.sglp.boundaries", "foo", "config key methods.sglp.boundaries: "),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_option_stops_the_dry_run(case: str, tmp_path: Path) -> None:
    key, value, message = BAD[case]
    result = snakemake_dry_run(_set(smoke(), key, value), tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-2000:]
    assert "Job stats" not in output
