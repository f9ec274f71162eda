"""The DDPM: a diffusers ``UNet2DModel`` + ``DDPMScheduler``, its training step, and sampling.

Read top to bottom this is the whole algorithm: images in [-1, 1], a random timestep and Gaussian
noise per image, the UNet predicts the noise (epsilon parameterisation), loss = MSE. Sampling uses
diffusers' DDIM, DPM-Solver++ or full DDPM scheduler built from the training scheduler's config.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from benchmark.model_configs import MODEL_CONFIGS, MODEL_INPUTS  # noqa: F401  (the registry lives there)
from benchmark.samplers import get_sampler
from benchmark.seeding import torch_seeded


class ModelConfigError(ValueError):
    """A model config does not fit the data (one-line message)."""


def build_unet(name: str, *, in_channels: int, resolution: int, num_classes: int | None = None,
               seed: int | None = None) -> UNet2DModel:
    """The named UNet for images of ``in_channels`` x ``resolution`` x ``resolution``.

    ``num_classes`` turns on class conditioning (a learned class embedding added to the timestep
    embedding, as in the seed paper's conditional runs). ``seed`` fixes the initial weights
    without touching the process's global torch generator.
    """
    from benchmark.model_configs import ModelConfigFileError, data_fields, is_config_path, read_config

    if is_config_path(name):  # your own UNet (benchmark.model_configs)
        try:
            own = read_config(name)
            fields = data_fields(name, own, in_channels=in_channels, resolution=resolution, num_classes=num_classes)
        except ModelConfigFileError as e:
            raise ModelConfigError(str(e)) from None
        cfg = {k: v for k, v in own.items() if k not in fields}
    else:
        try:
            cfg = MODEL_CONFIGS[name]
        except KeyError:
            raise ModelConfigError(f"unknown model {name!r} (known: {', '.join(MODEL_CONFIGS)}, config:PATH)") from None
    factor = 2 ** (len(cfg["block_out_channels"]) - 1)
    if resolution % factor:
        raise ModelConfigError(
            f"model {name!r} downsamples by {factor}; resolution {resolution} is not divisible by it"
        )
    # Without a seed the weights come from the caller's global generator.
    with torch_seeded(seed) if seed is not None else contextlib.nullcontext():
        try:
            return UNet2DModel(
                sample_size=resolution, in_channels=in_channels, out_channels=in_channels,
                num_class_embeds=num_classes, **cfg,
            )
        except (TypeError, ValueError) as e:  # a field UNet2DModel does not take, or a bad value
            raise ModelConfigError(f"model {name!r}: UNet2DModel refuses the config "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def compile_forward(model: UNet2DModel) -> UNet2DModel:
    """``torch.compile`` the UNet's forward in place and return the model. The module tree stays
    as it is, so Opacus' hooks (and our norm samplers) on its layers still fire; a hook is a graph
    break, so under DP the compiled graphs are per-layer pieces. ``bench verify-dp --compile``
    checks per-sample gradients through it against the eager per-sample loop. Trap: the
    attention key bias's gradient is zero in exact arithmetic (softmax ignores a constant added to
    a query's logits), so per-tensor relative errors there are rounding noise; compare norms over
    the whole model, as verify-dp does. Second trap: AOTAutograd donates the forward's saved
    buffers to a single backward by default, and Opacus' ghost clipping backpropagates twice
    through one graph (``retain_graph=True``), which then fails; donation is turned off here
    (process-wide: ``torch._functorch.config.donated_buffer``). Third trap: by default dynamo does
    not guard on nn.Module hooks, so a second UNet instance - one with Opacus' hooks - silently
    reuses the graph compiled for a hook-less one and no per-sample gradient is ever computed;
    ``torch._dynamo.config.skip_nnmodule_hook_guards`` is turned off here (process-wide)."""
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    dynamo_config.skip_nnmodule_hook_guards = False
    model.forward = torch.compile(model.forward)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear",
                         prediction_type="epsilon")


def to_model_range(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NCHW in [0, 255] -> float32 in [-1, 1]."""
    x = torch.as_tensor(images_uint8)
    return x.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float in [-1, 1] -> uint8 NCHW numpy."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def diffusion_loss(model: UNet2DModel, scheduler: DDPMScheduler, x0: torch.Tensor,
                   labels: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None,
                   reduction: str = "mean") -> torch.Tensor:
    """Epsilon-prediction MSE at a uniformly random timestep per image.

    ``noise`` and ``timesteps`` may be given (per-sample gradient checks need the same draws
    twice); otherwise they are drawn from ``generator``. ``reduction="none"`` returns one loss
    per image (what per-sample DP and attacks need).
    """
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],),
                                  generator=generator, device=x0.device)
    xt = scheduler.add_noise(x0, noise, timesteps)
    pred = model(xt, timesteps, class_labels=labels).sample
    per_image = F.mse_loss(pred, noise, reduction="none").flatten(1).mean(1)
    return per_image if reduction == "none" else per_image.mean()


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
            rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled mini-batches (the last one may be smaller)."""
    order = rng.permutation(len(images))
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield images[idx], labels[idx]


def train_epochs(model: UNet2DModel, optimizer: torch.optim.Optimizer, scheduler: DDPMScheduler,
                 images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int,
                 conditional: bool, device: str | torch.device, seed: int, noise_seed: int | None = None) -> dict:
    """Plain (non-private) training: a client's local epochs, and public pretraining.

    ``seed`` draws the batches, ``noise_seed`` (default: ``seed``) the noise and timesteps.
    Returns ``{"loss": mean loss over every step, "last_epoch_loss": the last epoch's mean, "steps": n}``.
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=device).manual_seed(seed if noise_seed is None else noise_seed)
    model.train()
    total, steps = 0.0, 0
    epoch_total, epoch_steps = 0.0, 0
    for _ in range(epochs):
        epoch_total, epoch_steps = 0.0, 0
        for xb, yb in batches(images, labels, batch_size, rng):
            x0 = to_model_range(xb).to(device)
            y = torch.as_tensor(yb, device=device) if conditional else None
            loss = diffusion_loss(model, scheduler, x0, y, generator=gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            total += value
            epoch_total += value
            steps += 1
            epoch_steps += 1
    return {"loss": total / max(steps, 1), "last_epoch_loss": epoch_total / max(epoch_steps, 1), "steps": steps}


def make_sampler(sampler: str, train_scheduler: DDPMScheduler):
    """The evaluation scheduler ``sampler`` (a name of :data:`benchmark.samplers.SAMPLERS`) built
    from the training scheduler's config."""
    return get_sampler(sampler)(train_scheduler.config)


@torch.no_grad()
def sample(model: UNet2DModel, train_scheduler: DDPMScheduler, n: int, *, steps: int,
           sampler: str = "ddim", num_classes: int | None = None, seed: int = 0,
           device: str | torch.device = "cpu", batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` images (uint8 NCHW) and the class labels they were conditioned on.

    Unconditional models get labels of -1. Class-conditional models get classes round-robin,
    so the generated set is class-balanced (what downstream accuracy needs).
    """
    sched = make_sampler(sampler, train_scheduler)
    model.eval()
    c, r = model.config.in_channels, model.config.sample_size
    gen = torch.Generator(device=device).manual_seed(seed)
    labels = np.arange(n) % num_classes if num_classes else np.full(n, -1)
    out = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        x = torch.randn((m, c, r, r), generator=gen, device=device)
        y = torch.as_tensor(labels[i:i + m], device=device) if num_classes else None
        sched.set_timesteps(steps, device=device)
        for t in sched.timesteps:
            eps = model(x, t, class_labels=y).sample
            x = sched.step(eps, t, x, generator=gen).prev_sample
        out.append(to_uint8(x))
    return np.concatenate(out), labels.astype(np.int64)
