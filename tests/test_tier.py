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
