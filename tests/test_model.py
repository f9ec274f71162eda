import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from benchmark.model import (MODEL_CONFIGS, ModelConfigError, build_unet, count_parameters,
                             diffusion_loss, make_scheduler, sample, train_epochs)


def test_named_configs_sizes():
    # The issue-7 reference models: 1.6M parameters at 28 px grayscale, 25.8M at 32 px RGB.
    assert abs(count_parameters(build_unet("unet-28", in_channels=1, resolution=28)) - 1.62e6) < 0.02e6
    assert abs(count_parameters(build_unet("unet-32", in_channels=3, resolution=32)) - 25.8e6) < 0.1e6
    assert count_parameters(build_unet("unet-tiny", in_channels=1, resolution=28)) < 0.3e6
    assert set(MODEL_CONFIGS) == {"unet-tiny", "unet-28", "unet-32"}


def test_resolution_must_fit_downsampling():
    with pytest.raises(ModelConfigError, match="not divisible"):
        build_unet("unet-28", in_channels=1, resolution=30)


def test_seeded_init_is_deterministic():
    a = build_unet("unet-tiny", in_channels=1, resolution=8, seed=3).state_dict()
    b = build_unet("unet-tiny", in_channels=1, resolution=8, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_seeded_init_leaves_the_global_generator_and_matches_seeding_it():
    """The weights are those of a process whose global generator was seeded with ``seed`` (what
    published checkpoints were built from), and the caller's generator is not touched."""
    torch.manual_seed(11)
    before = torch.get_rng_state()
    new = build_unet("unet-tiny", in_channels=1, resolution=8, num_classes=3, seed=5).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    old = build_unet("unet-tiny", in_channels=1, resolution=8, num_classes=3).state_dict()
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)


def test_training_reduces_loss_on_a_tiny_set():
    torch.manual_seed(0)
    model = build_unet("unet-tiny", in_channels=1, resolution=8, seed=0)
    sched = make_scheduler(100)
    rng = np.random.default_rng(0)
    images = (rng.random((16, 1, 8, 8)) > 0.5).astype(np.uint8) * 255
    labels = np.zeros(16, dtype=np.int64)
    x0 = torch.as_tensor(images).float() / 127.5 - 1
    gen = lambda: torch.Generator().manual_seed(123)  # noqa: E731 - same noise and timesteps
    with torch.no_grad():
        before = float(diffusion_loss(model, sched, x0, generator=gen()))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    stats = train_epochs(model, opt, sched, images, labels, epochs=30, batch_size=16,
                         conditional=False, device="cpu", seed=0)
    with torch.no_grad():
        after = float(diffusion_loss(model, sched, x0, generator=gen()))
    assert stats["steps"] == 30 and after < 0.8 * before


def test_per_image_loss_shape():
    model = build_unet("unet-tiny", in_channels=1, resolution=8)
    x0 = torch.zeros(5, 1, 8, 8)
    assert diffusion_loss(model, make_scheduler(50), x0, reduction="none").shape == (5,)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm-solver"])
def test_sampling_shapes_and_conditioning(sampler):
    model = build_unet("unet-tiny", in_channels=1, resolution=8, num_classes=3, seed=0)
    imgs, labels = sample(model, make_scheduler(20), 7, steps=20 if sampler == "ddpm" else 3,
                          sampler=sampler, num_classes=3, seed=1, batch_size=4)
    assert imgs.shape == (7, 1, 8, 8) and imgs.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    again, _ = sample(model, make_scheduler(20), 7, steps=20 if sampler == "ddpm" else 3,
                      sampler=sampler, num_classes=3, seed=1, batch_size=4)
    assert np.array_equal(imgs, again)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm-solver"])
def test_every_sampler_clips_predicted_images_to_the_data_range(sampler):
    # DDPM and DDIM clip each step's x0 prediction to [-1, 1] (clip_sample); DPM-Solver++ does it
    # through dynamic thresholding at sample_max_value 1, which must be exactly that clip: without
    # it a pixel-space model's samples come out speckled (results/README.md, sampler cost).
    from benchmark.model import make_sampler

    sched = make_sampler(sampler, make_scheduler())
    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    if sampler == "dpm-solver":
        assert sched.config.thresholding and sched.config.sample_max_value == 1.0
        assert torch.equal(sched._threshold_sample(x0), x0.clamp(-1, 1))
    else:
        assert sched.config.clip_sample and sched.config.clip_sample_range == 1.0


@pytest.mark.parametrize("sampler, cls, overrides", [
    ("ddim", DDIMScheduler, {}), ("ddpm", DDPMScheduler, {}),
    ("dpm-solver", DPMSolverMultistepScheduler, {"thresholding": True, "sample_max_value": 1.0}),
])
def test_each_sampler_is_its_diffusers_scheduler_from_the_training_config(sampler, cls, overrides):
    from benchmark.model import make_sampler

    train = make_scheduler()
    got, want = make_sampler(sampler, train), cls.from_config(train.config, **overrides)
    assert type(got) is cls and dict(got.config) == dict(want.config)


def test_an_unknown_sampler_is_refused_in_one_line_where_it_is_built():
    from benchmark.model import make_sampler
    from benchmark.samplers import UnknownSamplerError

    with pytest.raises(UnknownSamplerError, match=r"^unknown sampler 'euler' \(known: ddim, ddpm, dpm-solver\)$"):
        make_sampler("euler", make_scheduler())
