"""``mia-loss``: the denoising loss as a membership signal (Carlini et al. 2023, "Extracting
Training Data from Diffusion Models", section 6; Matsumoto et al. 2023, "Membership Inference
Attacks against Diffusion Models").

Threat model: the adversary holds the final global model, white box (weights, architecture, the
training noise schedule), and a candidate image with its class label. It wants to know whether the
candidate was in some client's training data. It observes nothing of the training itself.

Attack: a model fits its training images better, so their epsilon-prediction loss is lower. For
each candidate the loss ``||eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t) - eps||^2`` is averaged
over ``budget.mia_noise_draws`` Gaussian draws at each of the timesteps ``budget.mia_timesteps``
(small t, where Carlini et al. found the gap largest). Score = minus that mean: higher = member.
"""

from __future__ import annotations

import torch

from attacks.base import AttackBudget, AttackResult, FinalModelObservation, batched, timestep_index


@torch.no_grad()
def run(observation: FinalModelObservation, budget: AttackBudget, generator: torch.Generator) -> AttackResult:
    """One score per candidate (higher = member)."""
    model, scheduler, x0, labels = observation.model, observation.scheduler, observation.images, observation.labels
    T = scheduler.config.num_train_timesteps
    steps = [timestep_index(f, T) for f in budget.mia_timesteps]
    acp = scheduler.alphas_cumprod.to(x0.device, x0.dtype)

    def one_batch(x, y):
        total = torch.zeros(len(x), device=x.device, dtype=torch.float64)
        for t in steps:
            a = acp[t]
            tt = torch.full((len(x),), t, device=x.device, dtype=torch.long)
            for _ in range(budget.mia_noise_draws):
                eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                xt = a.sqrt() * x + (1 - a).sqrt() * eps
                pred = model(xt, tt, class_labels=y).sample
                total += (pred - eps).pow(2).flatten(1).mean(1).double()
        return total / (len(steps) * budget.mia_noise_draws)

    model.eval()
    return AttackResult(scores=(-batched(one_batch, x0, labels)).cpu().numpy())
