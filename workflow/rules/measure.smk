# Efficiency of every model of one run, measured one model at a time with all cores (threads:
# local_cores() keeps other jobs off the machine while timing; on a cluster the job's own CPUs),
# torch imported once.

MEASURE = config["measure"]


# One rule per PETL: a run's outputs (its model directories) depend on which method instances prune
# that PETL, and a rule's outputs cannot depend on a wildcard's value.
for _petl in ALL_PETLS:

    rule:
        name:
            f"measure_{_petl}"
        input:
            models=lambda wc, petl=_petl: [f"{d}/model.pt" for d in model_dirs({**wc, "petl": petl})],
            backbone=BACKBONE,
        output:
            [f"{d}/efficiency.json" for d in model_dirs({"task": "{task}", "petl": _petl, "seed": "{seed}"})],
        params:
            dirs=lambda wc, petl=_petl: model_dirs({**wc, "petl": petl}),
            batch_sizes=" ".join(str(b) for b in MEASURE["batch_sizes"]),
            device=MEASURE.get("device", "cpu"),  # paper.yaml: cuda (timing on the GPU the models run on)
        threads: job_threads("measure", local_cores)
        group: "retrain"
        resources:
            **job_resources("measure"),
        log:
            f"{R}/logs/measure/{{task}}-{_petl}-seed{{seed}}.log",
        benchmark:
            f"{R}/benchmarks/measure/{{task}}-{_petl}-seed{{seed}}.tsv"
        shell:
            "petlprune measure --backbone {input.backbone} --image-size {DATA[image_size]}"
            " --batch-sizes {params.batch_sizes} --warmup {MEASURE[warmup]} --repeats {MEASURE[repeats]}"
            " --device {params.device} --threads {threads} {params.dirs} > {log} 2>&1"
