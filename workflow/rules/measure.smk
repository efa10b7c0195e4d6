# Efficiency of every model of one run, measured one model at a time with all cores (threads:
# workflow.cores keeps other jobs off the machine while timing), torch imported once.

MEASURE = config["measure"]


rule measure:
    input:
        models=lambda wc: [f"{d}/model.pt" for d in model_dirs(wc)],
        backbone=BACKBONE,
    output:
        [f"{d}/efficiency.json" for d in model_dirs({"task": "{task}", "petl": "{petl}", "seed": "{seed}"})],
    params:
        dirs=lambda wc: model_dirs(wc),
        batch_sizes=" ".join(str(b) for b in MEASURE["batch_sizes"]),
    threads: workflow.cores
    log:
        f"{R}/logs/measure/{{task}}-{{petl}}-seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/measure/{{task}}-{{petl}}-seed{{seed}}.tsv"
    shell:
        "petlprune measure --backbone {input.backbone} --image-size {DATA[image_size]}"
        " --batch-sizes {params.batch_sizes} --warmup {MEASURE[warmup]} --repeats {MEASURE[repeats]}"
        " --threads {threads} {params.dirs} > {log} 2>&1"
