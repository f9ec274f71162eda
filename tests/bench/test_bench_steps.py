"""pytest-benchmark benchmarks (``tox -e bench``): never timed assertions, only measurements.

Machine info is extended with the versions that decide the speed (torch, opacus, diffusers).
"""

import numpy as np
import pytest
import torch

from benchmark.model import build_unet, diffusion_loss, make_scheduler, sample

BATCH = 32


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_unet("unet-tiny", in_channels=1, resolution=28, seed=0)
    return model, make_scheduler(1000), torch.rand(BATCH, 1, 28, 28) * 2 - 1


def test_plain_training_step(benchmark, tiny):
    model, sched, x0 = tiny
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step():
        loss = diffusion_loss(model, sched, x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    benchmark.extra_info["images_per_step"] = BATCH
    benchmark.pedantic(step, rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("mode", ["hooks", "ghost", "mixed-ghost", "mixed-ghost-bk"])
def test_dp_training_step(benchmark, mode):
    from benchmark.perf import make_train_step

    model = build_unet("unet-tiny", in_channels=1, resolution=28, seed=0)
    step, close = make_train_step(model, mode, batch=BATCH, device="cpu")
    benchmark.extra_info["images_per_step"] = BATCH
    benchmark.extra_info["mode"] = mode
    try:
        benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    finally:
        close()


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver"])
def test_sampling_10_steps(benchmark, tiny, sampler):
    model, sched, _ = tiny
    benchmark.extra_info["images"] = BATCH
    benchmark.pedantic(lambda: sample(model, sched, BATCH, steps=10, sampler=sampler, seed=0), rounds=3,
                       warmup_rounds=1)


def test_inception_features(benchmark, tmp_path, monkeypatch):
    from benchmark.fid import inception_features

    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path))
    images = np.random.default_rng(0).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    inception_features(images[:2])  # build the cached network file outside the timing
    benchmark.extra_info["images"] = len(images)
    benchmark.pedantic(lambda: inception_features(images), rounds=3, warmup_rounds=1)
