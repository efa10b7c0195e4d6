# Data: the embedded task suite (generated), the fractal source for pretraining, a gallery, a probe.

DATA = config["data"]
SIZES = ",".join(f"{k}={v}" for k, v in DATA.get("sizes", {}).items())


rule data:
    output:
        meta=f"{R}/data/{{task}}/meta.json",
    params:
        out=lambda wc, output: os.path.dirname(output.meta),
    log:
        f"{R}/logs/data/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/data/{{task}}.tsv"
    shell:
        "petlprune data --task {wildcards.task} --out {params.out} --seed {DATA[seed]}"
        " --image-size {DATA[image_size]} --sizes {SIZES} > {log} 2>&1"


rule source:
    output:
        meta=f"{R}/source/fractal/meta.json",
    params:
        out=lambda wc, output: os.path.dirname(output.meta),
        s=DATA.get("source", {}),
    log:
        f"{R}/logs/source.log",
    benchmark:
        f"{R}/benchmarks/source.tsv"
    shell:
        "petlprune source --out {params.out} --seed {params.s[seed]} --classes {params.s[classes]}"
        " --train-per-class {params.s[train_per_class]} --test-per-class {params.s[test_per_class]}"
        " --image-size {DATA[image_size]} > {log} 2>&1"


rule gallery:
    input:
        expand(f"{R}/data/{{task}}/meta.json", task=TASKS),
    output:
        f"{R}/data/gallery.png",
    params:
        dirs=lambda wc, input: [os.path.dirname(p) for p in input],
    log:
        f"{R}/logs/gallery.log",
    shell:
        "petlprune gallery --out {output} {params.dirs} > {log} 2>&1"


rule probe:
    input:
        expand(f"{R}/data/{{task}}/meta.json", task=TASKS),
    output:
        f"{R}/data/probe.json",
    params:
        dirs=lambda wc, input: [os.path.dirname(p) for p in input],
    log:
        f"{R}/logs/probe.log",
    benchmark:
        f"{R}/benchmarks/probe.tsv"
    shell:
        "petlprune probe --out {output} {params.dirs} > {log} 2>&1"
