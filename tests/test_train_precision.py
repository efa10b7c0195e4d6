"""The trainer's precision option: which CPUs get bf16 autocast, and that it really runs in bf16 there."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from petlprune import train
from petlprune.train import TrainConfig, autocast_dtype, cpu_has_native_bf16, evaluate, fit

AMD = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE = "flags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"
OLD = "flags\t\t: fpu sse2 avx2 avx512f avx512bw\nbugs\t\t: avx512_bf16_not_a_flag\n"


def test_native_bf16_is_read_from_the_flags_line_only():
    assert cpu_has_native_bf16(AMD) and cpu_has_native_bf16(SAPPHIRE)
    assert not cpu_has_native_bf16(OLD)  # the word in another line is not a flag
    assert not cpu_has_native_bf16("")


@pytest.mark.parametrize("native", [True, False])
def test_autocast_dtype_by_precision_device_and_cpu(monkeypatch, native):
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype("auto", "cpu") is None  # the study's default: CPU stays fp32
    assert autocast_dtype("fp32", "cpu") is None and autocast_dtype("fp32", "cuda") is None
    assert autocast_dtype("auto", "cuda") is torch.bfloat16 and autocast_dtype("bf16", "cuda") is torch.bfloat16
    assert autocast_dtype("bf16", "cpu") is (torch.bfloat16 if native else None)
    with pytest.raises(ValueError, match="precision 'fp16'"):
        autocast_dtype("fp16", "cpu")


def test_train_config_precision_default_and_error():
    cfg = TrainConfig(epochs=1, lr=0.1, weight_decay=0.0, warmup_epochs=0, batch_size=4)
    assert cfg.precision == "auto" and cfg.to_dict()["precision"] == "auto"
    with pytest.raises(ValueError, match="precision"):
        TrainConfig.from_dict({**cfg.to_dict(), "precision": "half"}, source="finetune")


class Probe(nn.Module):
    """Records the dtype its linear layer computed in."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.seen = []

    def forward(self, x):
        out = self.lin(x)
        self.seen.append(out.dtype)
        return out


@pytest.mark.parametrize("native", [True, False])
def test_fit_and_evaluate_run_in_bf16_only_where_asked_and_native(monkeypatch, native):
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: native)
    x, y = torch.randn(16, 4), torch.arange(16) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    for precision, expect in [("auto", torch.float32), ("fp32", torch.float32),
                              ("bf16", torch.bfloat16 if native else torch.float32)]:
        model = Probe()
        cfg = TrainConfig(epochs=1, lr=0.1, weight_decay=0.0, warmup_epochs=0, batch_size=8, precision=precision)
        fit(model, loader, cfg, log=None)
        evaluate(model, loader, precision=precision)
        assert set(model.seen) == {expect}, precision
        assert model.lin.weight.dtype == torch.float32  # master weights stay fp32 under autocast
