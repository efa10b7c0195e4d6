# The backbone: shipped with the package (bundled, its checksum verified here, at DAG build),
# pretrained here on the fractal source, or fetched / loaded. `bundle` writes a pretrained backbone
# as the package asset (workflow/config/backbone.yaml; book/data.md).

BB = config["backbone"]
BUNDLED = []
if BB["weights"] == "bundled":
    from petlprune.models.assets import bundled_path, checksum_path, verify_asset

    _asset = bundled_path(BB.get("checkpoint"))
    # Before any job: a corrupt or swapped asset stops the workflow here, naming the file.
    verify_asset(_asset)
    BUNDLED = [str(_asset), str(checksum_path(_asset))]


def _checkpoint_arg():
    if BUNDLED:
        return f"--checkpoint {shlex.quote(BUNDLED[0])}"
    return f"--checkpoint {shlex.quote(BB['checkpoint'])}" if BB.get("checkpoint") else ""


rule pretrain:
    input:
        source=[f"{R}/source/fractal/meta.json"] if BB["weights"] == "pretrain" else [],
        asset=BUNDLED,
    output:
        BACKBONE,
    params:
        kwargs=as_json(BB.get("timm_kwargs", {})),
        train=as_json(BB.get("pretrain", {})),
        data=lambda wc, input: f"--data {os.path.dirname(input.source[0])}" if input.source else "",
        ckpt=_checkpoint_arg(),
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


BUNDLE_DIR = f"{R}/bundle"
BUNDLE_COMMAND = "snakemake --cores 2 bundle --configfile workflow/config/backbone.yaml"


rule bundle:
    """The pretrained backbone as the package asset; copy the three files to src/petlprune/assets/."""
    input:
        BACKBONE,
    output:
        multiext(f"{BUNDLE_DIR}/{BB['name']}", ".safetensors", ".safetensors.sha256", ".json"),
    params:
        config=as_json({"backbone": BB, "data": {k: config["data"].get(k) for k in ("seed", "image_size", "source")}}),
        command=shlex.quote(BUNDLE_COMMAND),
    log:
        f"{R}/logs/bundle/{BB['name']}.log",
    shell:
        "petlprune bundle --backbone {input} --out {BUNDLE_DIR} --config {params.config}"
        " --command {params.command} > {log} 2>&1"
