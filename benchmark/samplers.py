"""The evaluation samplers by name: the one registry of a scenario's ``sampler``, ``bench perf
--sampler`` and ``bench sampler-cost``'s specs.

Torch-free: scenario validation and the CLI read the names without importing diffusers; an entry's
builder imports its scheduler class when a model is sampled (:func:`benchmark.model.make_sampler`).
Each builder makes its diffusers scheduler from the training scheduler's config.
"""

from __future__ import annotations

from collections.abc import Callable


class UnknownSamplerError(ValueError):
    """A sampler name that is not in :data:`SAMPLERS` (one line)."""


def _ddim(train_config):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(train_config)


def _ddpm(train_config):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(train_config)


def _dpm_solver(train_config):
    # DPM-Solver++ (2nd order multistep): good samples in 10-25 steps on well-trained models, but
    # worse than DDIM at 20 steps on the weakly trained unet-tiny measured (results/README.md).
    # DDPM and DDIM clip each step's predicted x0 to the data range [-1, 1] (the training
    # scheduler's clip_sample=True); DPM-Solver++ has no clip_sample, and without it a pixel-space
    # model's samples come out speckled (at 20 steps FID 270 without the clip, 214 with it;
    # results/README.md). Its dynamic thresholding with sample_max_value = 1 is exactly that clip
    # (the threshold is clamped to 1).
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(train_config, thresholding=True, sample_max_value=1.0)


# name -> builder (the training scheduler's config -> a diffusers scheduler)
SAMPLERS: dict[str, Callable] = {"ddim": _ddim, "ddpm": _ddpm, "dpm-solver": _dpm_solver}


def get_sampler(name: str) -> Callable:
    """The builder of sampler ``name``; an unknown name is refused in one line."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UnknownSamplerError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})") from None
