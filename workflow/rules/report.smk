# Report: papermill executes the notebook templates over the results tree; jupyter-book compiles them.
# Notebooks only read results and draw; they never train.

NB = f"{R}/notebooks"
# `petlprune notebook ARGS` is `papermill ARGS`, run by the warm worker when one runs, with a kernel
# forked from it that has imported ipykernel and petlprune.report (stages/notebook.py, kernel.py: the
# same cells and outputs, about 3 s less per notebook); without a worker, papermill as usual.
PETL0, SEED0 = PETLS[0], SEEDS[0]
# The SLS alpha whose depth the `matched` budgets get (config key matched_alpha; until a tier sets it,
# the first SLS alpha budget, which is what the plan rule matches to).
MATCHED_ALPHA = config.get("matched_alpha") or next(
    (b for b in config["budgets"].get("sls", []) if b.startswith("a")), "a0.3")


def tier_configs():
    """Every tier's methods and budgets (workflow/config/*.yaml), so the claims page can name the tier
    that runs an arm this one lacks."""
    import yaml

    out = {}
    for path in sorted(glob.glob("workflow/config/*.yaml")):
        with open(path) as fh:
            cfg = yaml.safe_load(fh) or {}
        out[os.path.splitext(os.path.basename(path))[0]] = {
            "methods": cfg.get("methods", {}), "budgets": cfg.get("budgets", {})}
    return out


TIER = os.path.splitext(os.path.basename(workflow.config_settings.configfiles[-1]))[0] if workflow.config_settings.configfiles else "default"


def run_results(task, petl, seed, methods=None):
    """Every file a notebook about one run reads: metrics/efficiency of each model, plans, scores."""
    wc = dict(task=task, petl=petl, seed=seed)
    run = RUN.format(**wc)
    files = [f"{run}/finetune/metrics.json", f"{run}/finetune/efficiency.json"]
    for key, budget in pruned_keys(petl):
        if methods is None or instance_of(key) in methods:
            d = f"{run}/pruned/{key}-{budget}"
            files += [f"{d}/metrics.json", f"{d}/efficiency.json", f"{run}/plan/{key}-{budget}.json",
                      f"{run}/score/{key}.json"]
    return sorted(set(files))


# A result page waits for its run's re-trained unpruned control too: its paired sentences compare with it.
rule result_notebook:
    input:
        template="notebooks/result.ipynb",
        results=lambda wc: run_results(wc.task, instance_petls(wc.method)[0], SEED0,
                                       methods={wc.method} | tier.reference_instances(config, instance_petls(wc.method)[0]))
        + [RUN.format(task=wc.task, petl=instance_petls(wc.method)[0], seed=SEED0) + "/features.npz"],
    output:
        f"{NB}/{{task}}/{{method}}.ipynb",
    params:
        petl=lambda wc: instance_petls(wc.method)[0],
    log:
        f"{R}/logs/notebooks/{{task}}-{{method}}.log",
    shell:
        "petlprune notebook {input.template} {output} -p results_dir {R} -p task {wildcards.task}"
        " -p method {wildcards.method} -p petl {params.petl} -p seed {SEED0} > {log} 2>&1"


rule task_notebook:
    input:
        template="notebooks/dataset.ipynb",
        results=lambda wc: [f for s in SEEDS for f in run_results(wc.task, PETL0, s)],
    output:
        f"{NB}/{{task}}.ipynb",
    log:
        f"{R}/logs/notebooks/{{task}}.log",
    shell:
        "petlprune notebook {input.template} {output} -p results_dir {R} -p task {wildcards.task}"
        " -p petl {PETL0} > {log} 2>&1"


rule summary:
    input:
        [f for t in TASKS for p in ALL_PETLS for s in SEEDS for f in run_results(t, p, s)],
    output:
        f"{R}/summary.csv",
    log:
        f"{R}/logs/summary.log",
    shell:
        "petlprune summary --results {R} --out {output} > {log} 2>&1"


# Aggregates across tasks x seeds (rliable): mean, IQM, P(improvement) with stratified-bootstrap
# intervals, one performance profile per PETL (report/aggregates.py).
rule aggregates:
    input:
        f"{R}/summary.csv",
    output:
        csv=f"{R}/aggregates.csv",
        figures=directory(f"{R}/aggregates"),
    log:
        f"{R}/logs/aggregates.log",
    benchmark:
        f"{R}/benchmarks/aggregates.tsv"
    shell:
        "petlprune aggregates --summary {input} --matched-alpha {MATCHED_ALPHA} --out {output.csv}"
        " --figures {output.figures} > {log} 2>&1"


# Friedman + Nemenyi + critical-difference diagrams (autorank, report/ranktest.py): in the DAG only
# where the tier has the 5 tasks the test needs (full, paper); the summary says so elsewhere.
FRIEDMAN = [f"{R}/friedman.csv"] if len(TASKS) >= 5 else []


rule friedman:
    input:
        f"{R}/summary.csv",
    output:
        csv=f"{R}/friedman.csv",
        figures=directory(f"{R}/friedman"),
    log:
        f"{R}/logs/friedman.log",
    benchmark:
        f"{R}/benchmarks/friedman.tsv"
    shell:
        "petlprune aggregates --summary {input} --matched-alpha {MATCHED_ALPHA} --friedman {output.csv}"
        " --figures {output.figures} > {log} 2>&1"


rule summary_notebook:
    input:
        template="notebooks/summary.ipynb",
        summary=f"{R}/summary.csv",
        aggregates=f"{R}/aggregates.csv",
        friedman=FRIEDMAN,
    output:
        f"{NB}/summary.ipynb",
    log:
        f"{R}/logs/notebooks/summary.log",
    shell:
        "petlprune notebook {input.template} {output} -p results_dir {R}"
        " -p matched_alpha {MATCHED_ALPHA} > {log} 2>&1"


rule claims_notebook:
    input:
        template="notebooks/claims.ipynb",
        summary=f"{R}/summary.csv",
        tiers=sorted(glob.glob("workflow/config/*.yaml")),
    output:
        f"{NB}/claims.ipynb",
    params:
        tiers=as_json(tier_configs()),
    log:
        f"{R}/logs/notebooks/claims.log",
    shell:
        "petlprune notebook {input.template} {output} -p results_dir {R}"
        " -p matched_alpha {MATCHED_ALPHA} -p tier {TIER} -p tiers_json {params.tiers} > {log} 2>&1"


rule rulegraph:
    input:
        workflow.main_snakefile,
        workflow.configfiles,
    output:
        f"{R}/rulegraph.dot",
    params:
        configs=" ".join(f"--configfile {c}" for c in workflow.config_settings.configfiles),
    log:
        f"{R}/logs/rulegraph.log",
    shell:
        "snakemake -s {input[0]} --rulegraph --nolock --cores 1 {params.configs} > {output} 2> {log}"


rule book:
    input:
        notebooks=[f"{NB}/summary.ipynb", f"{NB}/claims.ipynb"]
        + expand(f"{NB}/{{task}}.ipynb", task=TASKS)
        + expand(f"{NB}/{{task}}/{{method}}.ipynb", task=TASKS, method=list(config["budgets"])),
        gallery=f"{R}/data/gallery.png",
        probe=f"{R}/data/probe.json",
        rulegraph=f"{R}/rulegraph.dot",
        # Hand-written pages only: book/generated/ is written by this rule itself.
        sources=["book/_config.yml", "book/_toc.yml"]
        + sorted(p for p in glob.glob("book/**/*.md", recursive=True)
                 if not p.startswith(("book/generated/", "book/_build/"))),
    output:
        "book/_build/html/index.html",
    params:
        config=as_json(config),
        configs=" ".join(f"--config {c}" for c in workflow.config_settings.configfiles),
    log:
        f"{R}/logs/book.log",
    benchmark:
        f"{R}/benchmarks/book.tsv"
    shell:
        "(petlprune book --results {R} --book book --config-json {params.config} {params.configs}"
        " --rulegraph {input.rulegraph} && jupyter-book build book) > {log} 2>&1"
