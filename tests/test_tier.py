"""petlprune.tier: what a tier config means, shared by the workflow and the scripts."""

from __future__ import annotations

from petlprune.tier import instance_options, recipe

CONFIG = {
    "finetune": {"epochs": 10, "lr": 0.01, "batch_size": 64},
    "retrain": {"epochs": 4, "lr": 0.01, "batch_size": 64},
    "petl": {"methods": ["adapter"], "recipes": {"splora": {"finetune": {"lr": 0.003}}}},
    "methods": {"random": {"draws": 3}, "spa": {"method": "spa", "petl": "splora", "densities": [0.5]},
                "last_k": None},
}


def test_recipe_is_the_shared_one_with_the_petls_overrides_on_top():
    assert recipe(CONFIG, "finetune", "splora") == {"epochs": 10, "lr": 0.003, "batch_size": 64}
    assert recipe(CONFIG, "retrain", "splora") == CONFIG["retrain"]
    assert recipe(CONFIG, "finetune", "adapter") == CONFIG["finetune"]


def test_instance_options_drop_the_workflows_keys_only():
    assert instance_options(CONFIG, "spa") == {"densities": [0.5]}
    assert instance_options(CONFIG, "random") == {}
    assert instance_options(CONFIG, "last_k") == {} and instance_options(CONFIG, "absent") == {}


def test_reference_instances_are_the_unpruned_controls_of_the_petl():
    from petlprune.tier import instance_petls, reference_instances

    cfg = {"backbone": {"timm_kwargs": {"depth": 4}}, "petl": {"methods": ["adapter", "convpass"]},
           "methods": {"last_k": {}, "adapter_unpruned": {"method": "last_k", "petl": "adapter"},
                       "splora_unpruned": {"method": "last_k", "petl": "splora"}, "sls": {}},
           "budgets": {"last_k": ["d2"], "adapter_unpruned": ["d4"], "splora_unpruned": ["d4"], "sls": ["a0.3"]}}
    assert instance_petls(cfg, "last_k") == ["adapter", "convpass"] and instance_petls(cfg, "splora_unpruned") == ["splora"]
    assert reference_instances(cfg, "adapter") == {"adapter_unpruned"}
    assert reference_instances(cfg, "splora") == {"splora_unpruned"} and reference_instances(cfg, "convpass") == set()
    cfg["budgets"]["last_k"] = ["d4"]  # last_k at the full depth is the control of every PETL it prunes
    assert reference_instances(cfg, "convpass") == {"last_k"}
    cfg["backbone"]["timm_kwargs"] = {}  # paper.yaml: ViT-B/16's 12 blocks
    assert reference_instances(cfg, "convpass") == set()
