# PETL fine-tuning: train on train800val200, evaluate on test at the last epoch.


rule finetune:
    input:
        data=f"{R}/data/{{task}}/meta.json",
        backbone=BACKBONE,
    output:
        model=RUN + "/finetune/model.pt",
        metrics=RUN + "/finetune/metrics.json",
        predictions=RUN + "/finetune/predictions.npz",  # per test image: the paired comparisons' input
    params:
        data=lambda wc, input: os.path.dirname(input.data),
        out=lambda wc, output: os.path.dirname(output.model),
        options=lambda wc: as_json(config["petl"].get("options", {}).get(wc.petl, {})),
        train=lambda wc: as_json(recipe("finetune", wc.petl)),
    threads: job_threads("finetune")
    resources:
        **job_resources("finetune"),
    log:
        f"{R}/logs/finetune/{{task}}-{{petl}}-seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{task}}-{{petl}}-seed{{seed}}.tsv"
    shell:
        "petlprune finetune --data {params.data} --backbone {input.backbone} --petl {wildcards.petl}"
        " --petl-options {params.options} --train {params.train} --seed {wildcards.seed}"
        " --threads {threads} --out {params.out} > {log} 2>&1"
