"""Local DP-SGD (sample-level DP) for one federated client, through Opacus.

Each client trains with Opacus' ``PrivacyEngine``: Poisson sampling at rate ``batch_size / n``,
per-sample clipping to ``max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm``.
The noise is calibrated once per client so that its spend over *every round it could take part
in* (all ``rounds``, each ``local_epochs`` epochs) stays within ``target_epsilon`` at ``delta``;
the accountant's history lives across rounds in the client's Flower context, and the epsilon
actually spent is reported after every round (the leaderboard shows the maximum over clients,
whose data are disjoint).

Grad-sample modes (``GRAD_SAMPLE_MODES``): ``hooks`` (per-sample gradients), ``ghost`` (Opacus'
ghost clipping: norms without materialising per-sample gradients where a norm sampler exists, then
a second backward), ``mixed-ghost`` and ``mixed-ghost-bk`` (:mod:`privacy.mixed_ghost`: per-layer
cost-chosen ghost norms for Conv2d/Linear/GroupNorm, then Opacus' second backward resp.
book-keeping with one backward). All run with the Conv2d fix of :mod:`privacy.grad_samplers` and
pass ``bench verify-dp``.

Noise multiplicity (DPDM, Dockhorn et al. 2023): K noise/timestep draws per image, whose
per-sample gradients are averaged *before* clipping. One image is still one privacy unit, so the
accounting is unchanged; the averaged gradient has lower variance. Supported in ``hooks`` mode.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

import privacy  # noqa: F401  (installs the grad-sampler fix)
from benchmark.model import diffusion_loss, make_scheduler, to_model_range
from privacy.accounting import sample_level_noise
from privacy.mixed_ghost import MixedGhostPrivacyEngine, dp_backward

GRAD_SAMPLE_MODES = ("hooks", "ghost", "mixed-ghost", "mixed-ghost-bk")

DEFAULT_MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class LocalDPPlan:
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    steps_per_epoch: int
    max_steps: int            # over every round the client could take part in
    target_epsilon: float
    delta: float
    accountant: str
    grad_sample_mode: str
    noise_multiplicity: int

    def to_dict(self) -> dict:
        return asdict(self)


def plan_local_dp(*, n_train: int, batch_size: int, rounds: int, local_epochs: int, target_epsilon: float,
                  delta: float, max_grad_norm: float = DEFAULT_MAX_GRAD_NORM, accountant: str = "rdp",
                  grad_sample_mode: str = "hooks", noise_multiplicity: int = 1) -> LocalDPPlan:
    """Calibrate the noise for a client with ``n_train`` images (worst case: every round)."""
    if n_train < 1:
        raise ValueError("a DP-SGD client needs at least one training image")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"unknown grad_sample_mode {grad_sample_mode!r} (known: {', '.join(GRAD_SAMPLE_MODES)})")
    if noise_multiplicity < 1:
        raise ValueError("noise_multiplicity must be >= 1")
    if noise_multiplicity > 1 and grad_sample_mode != "hooks":
        raise ValueError("noise_multiplicity > 1 needs grad_sample_mode 'hooks' (per-sample gradients)")
    # Opacus samples at 1 / len(data_loader): plan with exactly that rate.
    steps_per_epoch = math.ceil(n_train / batch_size)
    sample_rate = 1.0 / steps_per_epoch
    max_steps = rounds * local_epochs * steps_per_epoch
    sigma = sample_level_noise(target_epsilon=target_epsilon, sample_rate=sample_rate, steps=max_steps,
                               delta=delta, accountant=accountant)
    return LocalDPPlan(sigma, sample_rate, max_grad_norm, steps_per_epoch, max_steps, target_epsilon, delta,
                       accountant, grad_sample_mode, noise_multiplicity)


def dp_train_epochs(model: torch.nn.Module, optimizer: torch.optim.Optimizer, plan: LocalDPPlan,
                    images: np.ndarray, labels: np.ndarray, *, epochs: int, num_train_timesteps: int,
                    conditional: bool, device: str | torch.device, seed: int,
                    accountant_history: list[tuple[float, float, int]]) -> dict:
    """``epochs`` of DP-SGD on one client. Returns loss, steps, the accountant's new history and
    the epsilon spent so far (this round included)."""
    engine = MixedGhostPrivacyEngine(accountant=plan.accountant)  # Opacus' engine + the mixed-ghost modes
    engine.accountant.history = [tuple(h) for h in accountant_history]
    data = torch.utils.data.TensorDataset(torch.as_tensor(images), torch.as_tensor(labels))
    loader = torch.utils.data.DataLoader(data, batch_size=math.ceil(len(images) * plan.sample_rate),
                                         generator=torch.Generator().manual_seed(seed))
    private = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm, poisson_sampling=True, grad_sample_mode=plan.grad_sample_mode,
        noise_generator=torch.Generator(device=device).manual_seed(seed + 1),
        criterion=torch.nn.MSELoss(),  # unused: we build the per-sample loss ourselves
    )
    gsm, dp_opt, dp_loader = private[0], private[1], private[-1]
    if abs(dp_loader.sample_rate - plan.sample_rate) > 1e-9:
        raise RuntimeError(f"Opacus sample rate {dp_loader.sample_rate} != planned {plan.sample_rate}")
    scheduler = make_scheduler(num_train_timesteps)
    gen = torch.Generator(device=device).manual_seed(seed + 2)
    k = plan.noise_multiplicity
    gsm.train()
    total, steps, seen = 0.0, 0, 0
    for _ in range(epochs):
        for xb, yb in dp_loader:
            dp_opt.zero_grad(set_to_none=True)
            if len(xb) == 0:
                # An empty Poisson batch is still a step of the mechanism: noise only.
                _zero_grads(gsm, plan.grad_sample_mode)
                dp_opt.step()
                steps += 1
                continue
            x0 = to_model_range(xb).to(device)
            y = yb.to(device) if conditional else None
            if k > 1:
                x0 = x0.repeat_interleave(k, 0)
                y = y.repeat_interleave(k, 0) if y is not None else None
            per_loss = diffusion_loss(gsm, scheduler, x0, y, generator=gen, reduction="none")
            if plan.grad_sample_mode != "hooks":
                dp_backward(gsm, dp_opt, per_loss)
            else:
                per_loss.mean().backward()
                if k > 1:
                    _average_multiplicity(gsm, len(xb), k)
            dp_opt.step()
            total += float(per_loss.detach().mean()) * len(xb)
            seen += len(xb)
            steps += 1
    history = [tuple(h) for h in engine.accountant.history]
    epsilon = float(engine.accountant.get_epsilon(plan.delta)) if history else 0.0
    gsm._close()  # remove Opacus hooks from the (shared) model
    return {"loss": total / max(seen, 1), "steps": steps, "history": history, "epsilon": epsilon}


def _average_multiplicity(gsm: torch.nn.Module, batch: int, k: int) -> None:
    """(B*K, ...) per-draw gradients -> (B, ...) per-image gradients, before clipping."""
    for p in gsm.parameters():
        if p.requires_grad and p.grad_sample is not None:
            p.grad_sample = p.grad_sample.view(batch, k, *p.shape).mean(1)


def _zero_grads(gsm: torch.nn.Module, mode: str) -> None:
    for p in gsm.parameters():
        if p.requires_grad:
            if mode != "hooks":
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
