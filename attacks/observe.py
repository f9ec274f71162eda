"""The victim's side of a ``client-update`` observation: what one client computes and sends.

The referee (``attacks.evaluate``) simulates the client with the run's model and the client's true
images, applying the client's own DP steps, and hands the attack the update the server receives
(``ObservedUpdate``). The diffusion loss here is the one the client trains on; an inversion
attacker that explains an update recomputes it with dummy images (``attacks.inversion``).

What the server sees under each DP mechanism (its ``attacker_view``, :mod:`privacy.mechanisms`):

* ``none``: the raw update;
* ``local-dpsgd``: every step is a DP-SGD step - per-sample gradients clipped to C, Gaussian noise
  of std ``noise_multiplier * C`` added to their sum, divided by the batch size - as Opacus does;
* ``central-dp``: the server adds the noise itself, so it sees the update *before* its noise:
  clipped to C where clipping is client-side (``clip_whole_update``), raw where it is
  server-side. Central DP protects the released model from everyone else; it does not protect
  the update from the server.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.func import functional_call

from attacks.base import AttackError, ClientRandomness, ObservedUpdate

KINDS = ("gradient", "fedavg")
# Whether the server can replay the client's diffusion noise and timesteps (its training seed):
# ``known`` where it can (this federation's default), ``secret`` on a SuperNode with secret-randomness.
RANDOMNESS = ("known", "secret")


def model_params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def _alpha_bar(acp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod at continuous timesteps (linear interpolation)."""
    lo = t.detach().floor().clamp(0, len(acp) - 2).long()
    w = t - lo.to(t.dtype)
    return acp[lo] * (1 - w) + acp[lo + 1] * w


def diffusion_loss(model, params, acp, x0, noise, t, labels) -> torch.Tensor:
    """Per-image epsilon-prediction MSE; t may be continuous (the UNet's time embedding is)."""
    a = _alpha_bar(acp, t).view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    pred = functional_call(model, params, (xt, t), {"class_labels": labels}).sample
    return (pred - noise).pow(2).flatten(1).mean(1)


def client_update(model, scheduler, x0: torch.Tensor, labels: torch.Tensor | None, *, kind: str,
                  local_steps: int = 1, lr: float = 1e-2, clip: float | None = None,
                  noise_multiplier: float = 0.0, clip_whole_update: bool = False,
                  generator: torch.Generator) -> ObservedUpdate:
    """The update a client with images ``x0`` sends. ``clip`` and ``noise_multiplier``: every step
    is a DP-SGD step (per-sample clipping, Gaussian noise); with ``clip_whole_update`` the finished
    update is clipped to ``clip`` instead (central DP with client-side clipping, no client noise)."""
    if kind not in KINDS:
        raise AttackError(f"unknown update kind {kind!r} (known: {', '.join(KINDS)})")
    model.eval()  # no dropout; GroupNorm is per-sample anyway
    acp = scheduler.alphas_cumprod.to(x0.device, x0.dtype)
    T = scheduler.config.num_train_timesteps
    start = model_params(model)
    params = {k: v.clone() for k, v in start.items()}
    steps = 1 if kind == "gradient" else local_steps
    noises, times = [], []
    for _ in range(steps):
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, T, (len(x0),), generator=generator, device=x0.device)
        noises.append(noise)
        times.append(t.to(x0.dtype))
        grads = []
        for i in range(len(x0)):               # exact per-sample gradients
            p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            li = diffusion_loss(model, p, acp, x0[i:i + 1], noise[i:i + 1], t[i:i + 1].to(x0.dtype),
                                None if labels is None else labels[i:i + 1]).sum()
            gi = torch.autograd.grad(li, list(p.values()))
            if clip is not None and not clip_whole_update:
                norm = torch.sqrt(sum(g.pow(2).sum() for g in gi))
                gi = [g * min(1.0, clip / (float(norm) + 1e-12)) for g in gi]
            grads.append(gi)
        total = [sum(g[j] for g in grads) for j in range(len(params))]
        if noise_multiplier > 0 and not clip_whole_update:
            if clip is None:
                raise AttackError("noise without a clipping bound has no sensitivity")
            total = [g + noise_multiplier * clip * torch.randn(g.shape, generator=generator, device=g.device,
                                                                dtype=g.dtype) for g in total]
        mean = {k: g / len(x0) for k, g in zip(params, total)}
        params = {k: params[k] - lr * mean[k] for k in params}
    replayed = ClientRandomness(torch.stack(noises), torch.stack(times))
    if kind == "gradient":
        return ObservedUpdate(kind, _clipped(mean, clip) if clip_whole_update else mean, len(x0), 1, lr, labels,
                              clip, replayed)
    delta = {k: params[k] - start[k] for k in params}
    return ObservedUpdate(kind, _clipped(delta, clip) if clip_whole_update else delta, len(x0), local_steps,
                          lr, labels, clip, replayed)


def as_seen(update: ObservedUpdate, randomness: str) -> ObservedUpdate:
    """The update as a server that can (``known``) or cannot (``secret``) replay the client's seed
    receives it: the replayed randomness is part of the observation only in the first case."""
    if randomness not in RANDOMNESS:
        raise AttackError(f"unknown inversion randomness {randomness!r} (known: {', '.join(RANDOMNESS)})")
    return update if randomness == "known" else replace(update, replayed=None)


def _clipped(update: dict[str, torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
    norm = float(torch.sqrt(sum(v.pow(2).sum() for v in update.values())))
    return {k: v * min(1.0, clip / (norm + 1e-12)) for k, v in update.items()}
