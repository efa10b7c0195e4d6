# Features -> scores -> Plan -> pruned + re-trained model, for every method key and budget.


rule features:
    input:
        model=RUN + "/finetune/model.pt",
        backbone=BACKBONE,
        data=f"{R}/data/{{task}}/meta.json",
    output:
        RUN + "/features.npz",
    params:
        data=lambda wc, input: os.path.dirname(input.data),
    threads: job_threads("features")
    group: "score"  # on a cluster, with the run's scores (workflow/profiles/slurm/config.yaml)
    resources:
        **job_resources("features"),
    log:
        f"{R}/logs/features/{{task}}-{{petl}}-seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/features/{{task}}-{{petl}}-seed{{seed}}.tsv"
    shell:
        "petlprune features --model {input.model} --backbone {input.backbone} --data {params.data}"
        " --split train800val200 --out {output} --threads {threads} > {log} 2>&1"


rule score:
    input:
        model=RUN + "/finetune/model.pt",
        backbone=BACKBONE,
        data=f"{R}/data/{{task}}/meta.json",
        features=RUN + "/features.npz",
    output:
        RUN + "/score/{method}.json",
    params:
        data=lambda wc, input: os.path.dirname(input.data),
        method=lambda wc: base_method(wc.method),
        options=lambda wc: as_json(method_options(wc.method)),
    threads: job_threads("score")
    group: "score"
    resources:
        **job_resources("score"),
    log:
        f"{R}/logs/score/{{task}}-{{petl}}-seed{{seed}}-{{method}}.log",
    benchmark:
        f"{R}/benchmarks/score/{{task}}-{{petl}}-seed{{seed}}-{{method}}.tsv"
    shell:
        "petlprune score --method {params.method} --model {input.model} --backbone {input.backbone}"
        " --data {params.data} --features {input.features} --options {params.options}"
        " --seed {wildcards.seed} --threads {threads} --out {output} > {log} 2>&1"


rule plan:
    input:
        scores=RUN + "/score/{method}.json",
        matched=lambda wc: [matched_plan().format(**wc)] if wc.budget == "matched" else [],
    output:
        RUN + "/plan/{method}-{budget}.json",
    params:
        method=lambda wc: base_method(wc.method),
        matched=lambda wc, input: f"--matched-plan {input.matched[0]}" if input.matched else "",
    resources:
        **job_resources("plan"),
    log:
        f"{R}/logs/plan/{{task}}-{{petl}}-seed{{seed}}-{{method}}-{{budget}}.log",
    shell:
        "petlprune plan --method {params.method} --scores {input.scores} --budget {wildcards.budget}"
        " {params.matched} --out {output} > {log} 2>&1"


rule prune:
    input:
        model=RUN + "/finetune/model.pt",
        backbone=BACKBONE,
        plan=RUN + "/plan/{method}-{budget}.json",
        data=f"{R}/data/{{task}}/meta.json",
    output:
        model=RUN + "/pruned/{method}-{budget}/model.pt",
        metrics=RUN + "/pruned/{method}-{budget}/metrics.json",
        predictions=RUN + "/pruned/{method}-{budget}/predictions.npz",
    params:
        data=lambda wc, input: os.path.dirname(input.data),
        out=lambda wc, output: os.path.dirname(output.model),
        train=lambda wc: as_json(recipe("retrain", wc.petl)),
    threads: job_threads("prune")
    group: "retrain"  # on a cluster, with the run's other prunes and its measure job
    resources:
        **job_resources("prune"),
    log:
        f"{R}/logs/prune/{{task}}-{{petl}}-seed{{seed}}-{{method}}-{{budget}}.log",
    benchmark:
        f"{R}/benchmarks/prune/{{task}}-{{petl}}-seed{{seed}}-{{method}}-{{budget}}.tsv"
    shell:
        "petlprune prune --model {input.model} --backbone {input.backbone} --plan {input.plan}"
        " --data {params.data} --train {params.train} --seed {wildcards.seed} --threads {threads}"
        " --out {params.out} > {log} 2>&1"
