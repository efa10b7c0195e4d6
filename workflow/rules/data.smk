# Data: the embedded task suite (generated) or a VTAB-1k copy (checked against its checksum manifest,
# then registered: list files pointing at its images), the fractal source for pretraining, a gallery,
# a probe.

DATA = config["data"]
SIZES = ",".join(f"{k}={v}" for k, v in DATA.get("sizes", {}).items())
VTAB_LISTS = ("train800", "val200", "train800val200", "test")


def vtab_inputs(wc):
    """data.kind vtab: the task's list files and the manifest, so that a missing folder fails at DAG
    time naming the file, and a changed list re-runs the task."""
    if DATA["kind"] != "vtab":
        return []
    files = [f"{DATA['root']}/{wc.task}/{split}.txt" for split in VTAB_LISTS]
    return files + ([DATA["manifest"]] if DATA.get("manifest") else [])


def data_args(wc):
    """The `petlprune data` arguments of one task: generate it, or check and register the VTAB-1k folder."""
    if DATA["kind"] == "vtab":
        args = f"--vtab-root {shlex.quote(DATA['root'] + '/' + wc.task)}"
        if wc.task in DATA.get("num_classes", {}):
            args += f" --num-classes {DATA['num_classes'][wc.task]}"
        if DATA.get("manifest"):
            args += f" --manifest {shlex.quote(DATA['manifest'])}"
        return args
    return f"--seed {DATA['seed']} --image-size {DATA['image_size']} --sizes {SIZES}"


rule data:
    input:
        vtab_inputs,
    output:
        meta=f"{R}/data/{{task}}/meta.json",
    params:
        out=lambda wc, output: os.path.dirname(output.meta),
        args=data_args,
    resources:
        **job_resources("data"),
    log:
        f"{R}/logs/data/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/data/{{task}}.tsv"
    shell:
        "petlprune data --task {wildcards.task} --out {params.out} {params.args} > {log} 2>&1"


rule source:
    output:
        meta=f"{R}/source/fractal/meta.json",
    params:
        out=lambda wc, output: os.path.dirname(output.meta),
        s=DATA.get("source", {}),
    resources:
        **job_resources("source"),
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
    resources:
        **job_resources("gallery"),
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
    resources:
        **job_resources("probe"),
    log:
        f"{R}/logs/probe.log",
    benchmark:
        f"{R}/benchmarks/probe.tsv"
    shell:
        "petlprune probe --out {output} {params.dirs} > {log} 2>&1"
