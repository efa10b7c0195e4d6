# Efficiency of every model of one run, measured one model at a time with all cores (threads:
# local_cores() keeps other jobs off the machine while timing; on a cluster the job's own CPUs),
# torch imported once. One job per task and PETL measures every seed's models: speed depends on the
# architecture, not the seed, so each architecture is timed once (interleaved with the others) and
# every model keeps its own counts (petlprune/stages/measure.py: architecture_key).

MEASURE = config["measure"]


def seed_model_dirs(task, petl):
    """Every model directory of one task and PETL, over all seeds (model_dirs per seed)."""
    return [d for seed in SEEDS for d in model_dirs({"task": task, "petl": petl, "seed": seed})]


# One rule per PETL: a run's outputs (its model directories) depend on which method instances prune
# that PETL, and a rule's outputs cannot depend on a wildcard's value.
for _petl in ALL_PETLS:

    rule:
        name:
            f"measure_{_petl}"
        input:
            models=lambda wc, petl=_petl: [f"{d}/model.pt" for d in seed_model_dirs(wc.task, petl)],
            backbone=BACKBONE,
        output:
            [f"{d}/efficiency.json" for d in seed_model_dirs("{task}", _petl)],
        params:
            dirs=lambda wc, petl=_petl: seed_model_dirs(wc.task, petl),
            batch_sizes=" ".join(str(b) for b in MEASURE["batch_sizes"]),
            device=MEASURE.get("device", "cpu"),  # paper.yaml: cuda (timing on the GPU the models run on)
        threads: job_threads("measure", local_cores)
        group: "retrain"
        resources:
            **job_resources("measure"),
        log:
            f"{R}/logs/measure/{{task}}-{_petl}.log",
        benchmark:
            f"{R}/benchmarks/measure/{{task}}-{_petl}.tsv"
        shell:
            "petlprune measure --backbone {input.backbone} --image-size {DATA[image_size]}"
            " --batch-sizes {params.batch_sizes} --warmup {MEASURE[warmup]} --repeats {MEASURE[repeats]}"
            " --device {params.device} --threads {threads} {params.dirs} > {log} 2>&1"
