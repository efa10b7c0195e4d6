"""The GPU path, tested where it can be on CPU: device choice, loader settings (pinned memory,
workers), threaded image caching, and that CPU timing never touches CUDA. The `gpu` tests run the
same code on a CUDA device and are skipped cleanly without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from petlprune.data.vtab import VTABDataset, default_workers, make_loader
from petlprune.train import most_free_gpu, select_device


def _folder(root, n=10, size=(20, 26)):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        rows.append(f"images/{i}.png {i % 3}")
    (root / "train800val200.txt").write_text("\n".join(rows) + "\n")
    return root


def test_most_free_gpu_picks_the_emptiest_and_the_lowest_on_ties():
    assert most_free_gpu([10, 30, 20]) == 1
    assert most_free_gpu([5, 5, 1]) == 0
    assert most_free_gpu([7]) == 0
    with pytest.raises(ValueError):
        most_free_gpu([])


def test_select_device_auto_spreads_over_gpus(monkeypatch):
    """With several visible GPUs, 'auto' takes the one with the most free memory (CUDA faked)."""
    free = {0: 1 << 30, 1: 8 << 30, 2: 4 << 30}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 80 << 30))
    assert select_device("auto") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("auto") == torch.device("cuda", 0)  # Slurm's --gpus=1: the one visible GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        select_device("cuda:1")


def test_default_workers():
    assert default_workers(False, cpus=64) == 0  # CPU training keeps every core for torch
    assert default_workers(True, cpus=16) == 4
    assert default_workers(True, cpus=4) == 2
    assert default_workers(True, cpus=1) == 0


def test_make_loader_pins_memory_only_with_cuda(monkeypatch, tmp_path):
    ds = VTABDataset(_folder(tmp_path / "t"), "train800val200", image_size=8)
    loader = make_loader(ds, 4, shuffle=False, seed=0)
    assert loader.pin_memory is torch.cuda.is_available()
    assert loader.num_workers == default_workers(torch.cuda.is_available())
    assert make_loader(ds, 4, shuffle=False, seed=0, pin_memory=False).pin_memory is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what a GPU node would get
    fake_gpu = make_loader(ds, 4, shuffle=True, seed=0, workers=0)
    assert fake_gpu.pin_memory is True and fake_gpu.num_workers == 0


@pytest.mark.slow
def test_workers_do_not_change_the_batches(tmp_path):
    """Worker processes change the speed only: the same seed gives the same batches, in order."""
    ds = VTABDataset(_folder(tmp_path / "t"), "train800val200", image_size=16, cache=True)

    def batches(workers):
        return [(x.clone(), y.clone()) for x, y in make_loader(ds, 3, shuffle=True, seed=5, workers=workers,
                                                               pin_memory=False)]

    a, b = batches(0), batches(2)
    assert len(a) == len(b) == 4
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))


def test_threaded_cache_equals_serial_decoding(tmp_path):
    root = _folder(tmp_path / "t", n=13)
    serial = VTABDataset(root, "train800val200", image_size=24, cache=True, cache_threads=1)
    threaded = VTABDataset(root, "train800val200", image_size=24, cache=True, cache_threads=4)
    lazy = VTABDataset(root, "train800val200", image_size=24)
    assert threaded.pixels().shape == (13, 3, 24, 24) and threaded.pixels().dtype == torch.uint8
    assert torch.equal(serial.pixels(), threaded.pixels()) and torch.equal(lazy.pixels(), threaded.pixels())
    for i in (0, 7, 12):
        assert torch.allclose(threaded[i][0], lazy[i][0], atol=1e-6)


def test_cpu_timing_never_touches_cuda(monkeypatch):
    """On CPU, throughput times with perf_counter; CUDA events are for CUDA devices only."""
    from petlprune import measure

    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA timing used on CPU")

    monkeypatch.setattr(torch.cuda, "Event", no_cuda)
    monkeypatch.setattr(torch.cuda, "synchronize", no_cuda)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    got = measure.throughput(model, 2, input_shape=(3, 4, 4), warmup=1, repeats=3, device="cpu")
    assert got["images_per_s"] > 0 and got["latency_ms"] > 0


def test_no_autocast_on_cpu():
    """CPU training stays in fp32 (deterministic); bf16 autocast is for CUDA (test below)."""
    from petlprune.train import _autocast

    with _autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.float32


@pytest.mark.gpu
def test_autocast_is_bf16_on_cuda():
    from petlprune.train import _autocast

    with _autocast(torch.device("cuda")):
        assert torch.nn.Linear(4, 2).cuda()(torch.randn(3, 4, device="cuda")).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# on a GPU


@pytest.mark.gpu
def test_gpu_loader_pins_and_training_step_runs_in_bf16(tmp_path):
    from petlprune.train import TrainConfig, fit

    ds = VTABDataset(_folder(tmp_path / "t", n=8), "train800val200", image_size=32, cache=True)
    loader = make_loader(ds, 4, shuffle=True, seed=0)
    x, _ = next(iter(loader))
    assert x.is_pinned()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    dev = select_device("auto")
    assert dev.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert model.to(dev)(x.to(dev)).dtype == torch.bfloat16
    cfg = TrainConfig(epochs=1, lr=1e-2, weight_decay=0.0, warmup_epochs=0, batch_size=4)
    hist = fit(model, loader, cfg, device=dev, log=None)
    assert np.isfinite(hist[0]["loss"]) and next(model.parameters()).is_cuda


@pytest.mark.gpu
def test_gpu_throughput_with_cuda_events_on_a_vit_b():
    from petlprune.measure import throughput
    from petlprune.models.backbone import create_backbone

    model = create_backbone("vit_base_patch16_224", num_classes=10, weights="random").cuda()
    got = throughput(model, 8, warmup=3, repeats=5)
    assert got["images_per_s"] > 0 and got["latency_ms"] > 0
