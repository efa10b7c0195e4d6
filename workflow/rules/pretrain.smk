# The backbone: pretrained here on the fractal source (embedded study), or fetched / loaded.

BB = config["backbone"]


rule pretrain:
    input:
        source=[f"{R}/source/fractal/meta.json"] if BB["weights"] == "pretrain" else [],
    output:
        BACKBONE,
    params:
        kwargs=as_json(BB.get("timm_kwargs", {})),
        train=as_json(BB.get("pretrain", {})),
        data=lambda wc, input: f"--data {os.path.dirname(input.source[0])}" if input.source else "",
        ckpt=f"--checkpoint {BB['checkpoint']}" if BB.get("checkpoint") else "",
        seed=config["data"].get("seed", 0),
        # torch threads fixed by the config, not Snakemake's {threads} (scaled down to --cores): the
        # backbone's floats depend on the thread count, and every later result on the backbone.
        torch_threads=job_threads("pretrain", 2),
    threads: job_threads("pretrain", 2)
    resources:
        **job_resources("pretrain"),
    log:
        f"{R}/logs/pretrain/{BB['name']}.log",
    benchmark:
        f"{R}/benchmarks/pretrain/{BB['name']}.tsv"
    shell:
        "petlprune pretrain --out {output} --timm-model {BB[timm_model]} --timm-kwargs {params.kwargs}"
        " --weights {BB[weights]} {params.ckpt} {params.data} --train {params.train}"
        " --seed {params.seed} --threads {params.torch_threads} > {log} 2>&1"
