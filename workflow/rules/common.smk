# Shared names and target lists. Pure functions of the (validated) config; no work happens here.
import glob
import json
import shlex

R = config["results"]
TASKS = config["data"]["tasks"]
SEEDS = config["seeds"]
PETLS = config["petl"]["methods"]  # the PETL runs every method instance without its own `petl:` prunes
# A method instance may name the one PETL it prunes (SPA: `petl: splora`); that PETL is then
# fine-tuned too, and only that instance runs on it.
ALL_PETLS = list(dict.fromkeys(PETLS + [o["petl"] for o in config["methods"].values() if o.get("petl")]))
THREADS = config.get("threads", 1)
RUN = R + "/runs/{task}/{petl}/seed{seed}"
BACKBONE = f"{R}/backbone/{config['backbone']['name']}.pt"
METHOD_RE = r"[a-z][a-z0-9_]*(\.[0-9]+)?"
from petlprune.core.budgets import BUDGET_PATTERN as BUDGET_RE  # the budget grammar (core/budgets.py)

wildcard_constraints:
    task="|".join(TASKS),
    petl="|".join(ALL_PETLS),
    seed=r"[0-9]+",
    method=METHOD_RE,
    budget=BUDGET_RE,


from petlprune.methods import METHOD_MODULES  # the registry's names (importing it is cheap)
from petlprune.methods.base import check_method_config
from petlprune import tier, worker

METHOD_NAMES = sorted(METHOD_MODULES)


def registered_method(instance):
    """The registered method an instance of config['methods'] runs."""
    return config["methods"][instance].get("method", instance)


def check_config():
    """Cross-field checks the schema cannot express; fail before any job runs, naming the key."""
    for instance in config["methods"]:
        if registered_method(instance) not in METHOD_NAMES:
            raise ValueError(
                f"config key methods.{instance}: unknown method {registered_method(instance)!r} "
                f"(known: {', '.join(METHOD_NAMES)}; a variant names one with `method:`)"
            )
    unknown = sorted(set(config["budgets"]) - set(config["methods"]))
    if unknown:
        raise ValueError(f"config key budgets.{unknown[0]}: method {unknown[0]!r} has no entry under 'methods'")
    uses_matched = [m for m, bs in config["budgets"].items() if "matched" in bs]
    alpha = config.get("matched_alpha")
    sls_alphas = [b for b in config["budgets"].get("sls", []) if b.startswith("a")]
    if uses_matched and alpha is None:
        raise ValueError(
            f"config key matched_alpha: budgets.{uses_matched[0]} uses 'matched'; name the SLS alpha "
            f"whose depth it takes (e.g. matched_alpha: {sls_alphas[0] if sls_alphas else 'a0.3'})"
        )
    if alpha is not None and alpha not in sls_alphas:
        raise ValueError(
            f"config key matched_alpha: {alpha!r} is not an SLS budget (budgets.sls: {sls_alphas}); "
            "'matched' takes the depth SLS chose at that alpha"
        )
    for petl in config["petl"].get("recipes", {}):
        if petl not in ALL_PETLS:
            raise ValueError(
                f"config key petl.recipes.{petl}: {petl!r} is never fine-tuned in this config "
                f"(fine-tuned: {', '.join(ALL_PETLS)})"
            )
    tier.check_inputs(config)  # backbone shapes, budgets vs depth, PETL options, checkpoint (tier.py)
    # Each instance's options and budgets, through the method's own declarations (methods/base.py).
    for instance, opts in config["methods"].items():
        # the options as written too: method_options replaces SLS's alpha by its budgets' lowest
        check_method_config(instance, registered_method(instance), tier.instance_options(config, instance), [])
        check_method_config(instance, registered_method(instance), method_options(method_keys(instance)[0]),
                            config["budgets"].get(instance, []))
    return True


def as_json(obj):
    """A shell-quoted JSON argument for the CLI."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def method_keys(instance):
    """Result keys of one method instance: 'random' runs several draws, random.0, random.1, ..."""
    draws = config["methods"][instance].get("draws")
    return [f"{instance}.{k}" for k in range(draws)] if draws else [instance]


def instance_of(key):
    """'random.1' -> 'random': the config instance a result key belongs to."""
    return key.split(".")[0]


def base_method(key):
    """The registered method a result key runs."""
    return registered_method(instance_of(key))


def method_options(key):
    """The options a result key is scored with (a draw index for random draws; the lowest SLS
    alpha of the instance's sweep so that t-SNE early stop still covers every alpha)."""
    instance = instance_of(key)
    opts = tier.instance_options(config, instance)
    if "." in key:
        opts["draw"] = int(key.split(".")[1])
    if base_method(key) == "sls":
        alphas = [float(b[1:]) for b in config["budgets"].get(instance, []) if b.startswith("a")]
        if alphas:
            opts["alpha"] = min(alphas)
    return opts


def recipe(stage, petl):
    """The training recipe of ``stage`` ('finetune' or 'retrain') for PETL ``petl``: the shared one,
    with that PETL's overrides from petl.recipes."""
    return tier.recipe(config, stage, petl)


def matched_plan():
    """The SLS plan whose depth 'matched' budgets use: SLS at config['matched_alpha']."""
    return RUN + f"/plan/sls-{config['matched_alpha']}.json"


check_config()


def instance_petls(instance):
    """The PETL runs a method instance prunes: its own `petl:`, else every PETL of petl.methods."""
    return tier.instance_petls(config, instance)


def pruned_keys(petl):
    """(method key, budget) of every pruned result of one run of PETL ``petl``."""
    return [(key, b) for m, bs in config["budgets"].items() if petl in instance_petls(m)
            for key in method_keys(m) for b in bs]


def run_dirs():
    return expand(RUN, task=TASKS, petl=ALL_PETLS, seed=SEEDS)


def model_dirs(wc):
    """Every model directory of one run: the fine-tuned model and each pruned result."""
    run = RUN.format(**wc)
    return [f"{run}/finetune"] + [f"{run}/pruned/{k}-{b}" for k, b in pruned_keys(wc["petl"])]


def study_targets():
    targets = [f"{R}/data/gallery.png", f"{R}/data/probe.json"]
    for wc in [dict(task=t, petl=p, seed=s) for t in TASKS for p in ALL_PETLS for s in SEEDS]:
        targets += [f"{d}/efficiency.json" for d in model_dirs(wc)]
    return targets


# Job resources per rule from config['resources'] (paper.yaml): `default`, then the rule's own entry.
# The embedded tiers set none, so their jobs ask for no GPU and stay unconstrained on CPU. Profiles
# map them: local caps `gpu`, slurm turns them into sbatch options (--gpus, --mem, -t, --cpus-per-task).
RESOURCES = config.get("resources", {})


def _rule_resources(rule):
    return {**RESOURCES.get("default", {}), **RESOURCES.get(rule, {})}


def job_resources(rule):
    """Snakemake resources of one rule (`resources: **job_resources("finetune")`); threads excluded."""
    return {k: v for k, v in _rule_resources(rule).items() if k != "threads"}


def job_threads(rule, fallback=THREADS):
    """Threads of one rule: its config['resources'] entry, else ``fallback`` (config['threads'];
    a function is evaluated only when the config gives no threads)."""
    return _rule_resources(rule).get("threads", fallback)


def local_cores(wildcards=None):
    """A local run's --cores, for a rule that must have the machine to itself; else config['threads'].

    Give it uncalled (``threads: job_threads("measure", local_cores)``): Snakemake then asks when it
    builds the jobs, once it knows the executor. A cluster executor has no total number of cores
    (``workflow.cores`` raises), and neither has the Snakemake inside each cluster job (``--mode
    remote``, which must compute the threads the job was submitted with).
    """
    if workflow.local_exec and not workflow.remote_exec:
        return workflow.cores
    return THREADS
