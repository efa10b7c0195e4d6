"""The trainer: schedule, optimiser groups, determinism, NaN stop, evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from petlprune.train import (
    NonFiniteLossError,
    TrainConfig,
    cosine_warmup,
    evaluate,
    fit,
    param_groups,
    select_device,
    set_determinism,
)


def _blobs(n=96, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 3
    y = torch.arange(n) % classes
    x = centres[y] + torch.randn(n, d, generator=g)
    return x, y


def _loader(x, y, batch=16, seed=0):
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


class Net(nn.Module):
    def __init__(self, d=6, classes=3):
        super().__init__()
        self.body = nn.Linear(d, 16)
        self.norm = nn.LayerNorm(16)
        self.drop = nn.Dropout(0.2)  # exercises the RNG: determinism must still hold
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.drop(self.norm(torch.relu(self.body(x)))))


CFG = TrainConfig(epochs=6, lr=0.05, weight_decay=0.05, warmup_epochs=1, batch_size=16)


def test_cosine_warmup_known_values():
    assert [cosine_warmup(s, 10, 2) for s in (0, 1)] == [0.5, 1.0]
    assert cosine_warmup(2, 10, 2) == 1.0
    assert cosine_warmup(6, 10, 2) == pytest.approx(0.5)
    assert cosine_warmup(9, 10, 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert cosine_warmup(0, 10, 0) == 1.0


def test_fit_learns_and_reports_history():
    torch.manual_seed(0)
    x, y = _blobs()
    model = Net()
    lines = []
    hist = fit(model, _loader(x, y), CFG, seed=0, log=lines.append)
    assert [h["epoch"] for h in hist] == list(range(1, 7)) and len(lines) == 6
    assert set(hist[0]) == {"epoch", "loss", "lr", "train_top1", "seconds"}
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["train_top1"] > 0.9
    # per-iteration schedule: 6 steps/epoch, warm-up 6 steps; lr logged at each epoch's last step
    assert hist[0]["lr"] == pytest.approx(CFG.lr)
    assert hist[3]["lr"] == pytest.approx(CFG.lr * cosine_warmup(23, 36, 6))
    ev = evaluate(model, _loader(x, y))
    assert ev["n"] == 96 and ev["top1"] > 0.9 and model.training


def test_fit_is_deterministic():
    x, y = _blobs()
    runs = []
    for _ in range(2):
        set_determinism(5, threads=1)
        model = Net()
        hist = fit(model, _loader(x, y, seed=5), CFG, seed=5, log=None)
        runs.append(([{k: v for k, v in h.items() if k != "seconds"} for h in hist], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())


def test_only_trainable_params_change_and_decay_groups():
    torch.manual_seed(0)
    model = Net()
    model.body.requires_grad_(False)
    frozen = model.body.weight.clone()
    groups = param_groups(model, 0.05)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.head.weight)}  # norms and biases never decay; frozen params not optimised
    assert sum(len(g["params"]) for g in groups) == 4
    x, y = _blobs()
    fit(model, _loader(x, y), CFG, log=None)
    assert torch.equal(model.body.weight, frozen)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        fit(model, _loader(x, y), CFG, log=None)


def test_non_finite_loss_names_epoch_and_step():
    x, y = _blobs()
    x[40] = float("nan")  # sample 40 is in the 3rd batch of the unshuffled loader
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 3/6"):
        fit(Net(), loader, CFG, log=None)


def test_loss_fn_hook_receives_logits_labels_inputs():
    x, y = _blobs()
    seen = []

    def loss_fn(logits, target, inputs):
        seen.append((logits.shape, target.shape, inputs.shape))
        return F.cross_entropy(logits, target)

    fit(Net(), _loader(x, y), TrainConfig(epochs=1, lr=0.01, weight_decay=0, warmup_epochs=0, batch_size=16),
        loss_fn=loss_fn, log=None)
    assert len(seen) == 6 and seen[0] == ((16, 3), (16,), (16, 6))


def test_evaluate_known_answer():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 1, 1])  # predictions 0,1,0,1,0 -> 3/5 correct
    ev = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=2))
    assert ev["top1"] == pytest.approx(0.6) and ev["n"] == 5
    assert ev["loss"] == pytest.approx(F.cross_entropy(x, y).item(), rel=1e-6)


def test_train_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"cfg\.json: unknown key\(s\) momentum"):
        TrainConfig.from_dict({**CFG.to_dict(), "momentum": 0.9}, source="cfg.json")
    with pytest.raises(ValueError, match=r"missing key\(s\) lr"):
        TrainConfig.from_dict({k: v for k, v in CFG.to_dict().items() if k != "lr"})
    with pytest.raises(ValueError, match="invalid warmup_epochs"):
        TrainConfig(epochs=2, lr=0.1, weight_decay=0, warmup_epochs=3, batch_size=4)
    assert TrainConfig.from_dict(CFG.to_dict()) == CFG


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")


@pytest.mark.gpu
def test_fit_and_evaluate_on_cuda_with_bf16_autocast():
    x, y = _blobs()
    model = Net()
    hist = fit(model, _loader(x, y), CFG, device="cuda", log=None)
    assert next(model.parameters()).is_cuda and math.isfinite(hist[-1]["loss"])
    assert evaluate(model, _loader(x, y), "cuda")["top1"] > 0.8
