"""The contract layer: the facts every layer shares, torch-free and importing nothing else of ours but
``petlprune.io``.

What is here: the budget grammar (:mod:`~petlprune.core.budgets`), declared options and their checks
(:mod:`~petlprune.core.options`), the Plan and Scores file formats (:mod:`~petlprune.core.formats`),
the split rules (:mod:`~petlprune.core.splits`), the PETL names and their declared options
(:mod:`~petlprune.core.petl`) and what a backbone config must satisfy (:mod:`~petlprune.core.backbone`).
Stages, ``report``, ``tier`` and the Snakefile read these facts here and nowhere else. The import
contracts that keep it so are in ``pyproject.toml`` (``[tool.importlinter]``); CONTRIBUTING.md's
"Layering" section says how to extend it.
"""
