# petlprune: PETL fine-tuning -> scoring -> pruning -> re-training -> measurement -> report.
# Run:   snakemake --cores 2                         (the embedded study, workflow/config/default.yaml)
#        snakemake --cores 2 --configfile workflow/config/full.yaml
# Every rule calls `petlprune <stage>` with explicit arguments; the package never reads this config.

from snakemake.utils import min_version, validate

min_version("9.0")


# The default tier only when no --configfile is given: Snakemake would otherwise MERGE the two
# (a method or task of the default leaking into another tier).
if not workflow.config_settings.configfiles:

    configfile: "workflow/config/default.yaml"


# `--config 'seeds=[0,1,2]'` reaches here as strings (Snakemake's --config parser): make them integers.
if isinstance(config.get("seeds"), list):
    config["seeds"] = [int(s) if isinstance(s, str) and s.strip().isdigit() else s for s in config["seeds"]]

validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/report.smk"

# Seconds-long jobs run where Snakemake runs, never as cluster jobs (thousands of plan jobs in paper.yaml).
localrules:
    all,
    plan,
    gallery,
    probe,
    summary,
    aggregates,
    friedman,
    summary_notebook,
    claims_notebook,
    task_notebook,
    result_notebook,
    rulegraph,
    book,

# A warm worker for local execution (petlprune/worker.py): each torch job forks from one process that
# has imported torch, instead of importing it again (about 3.5 s of every such job). Not for cluster
# jobs, which run elsewhere; `--config worker=false` turns it off.
onstart:
    if config["worker"] and workflow.local_exec:
        worker.start(f"{R}/logs/worker.log")


onsuccess:
    worker.stop()


onerror:
    worker.stop()


rule all:
    input:
        study_targets(),
        "book/_build/html/index.html",
    default_target: True
