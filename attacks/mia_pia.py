"""``mia-pia``: Proximal Initialization Attack (Kong et al. 2024, "An Efficient Membership
Inference Attack for the Diffusion Model by Proximal Initialization", ICLR).

Threat model: the adversary holds the final global model, white box (weights, architecture, the
training noise schedule), and a candidate image with its class label, and wants to know whether
the candidate was in some client's training data. Nothing of the training is observed.

Attack: instead of a random noise draw, take the model's own output at t = 0,
``eps_0 = eps_theta(x_0, 0)``, as the noise (the "proximal initialization"), form
``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps_0`` in one step, and measure how far the model's
prediction at t moves away from it: ``||eps_theta(x_t, t) - eps_0||_4`` (PIA uses the l4 norm).
A model is more self-consistent on its training images. Two forward passes per candidate, no
randomness. Score = minus the distance: higher = member. t comes from the budget (PIA: 200 of 1000).
"""

from __future__ import annotations

import torch

from attacks.base import AttackBudget, AttackResult, FinalModelObservation, batched, timestep_index


@torch.no_grad()
def run(observation: FinalModelObservation, budget: AttackBudget, generator: torch.Generator) -> AttackResult:
    """One score per candidate (higher = member)."""
    model, scheduler, x0, labels = observation.model, observation.scheduler, observation.images, observation.labels
    T = scheduler.config.num_train_timesteps
    t = timestep_index(budget.pia_t, T)
    a = scheduler.alphas_cumprod.to(x0.device, x0.dtype)[t]

    def one_batch(x, y):
        zeros = torch.zeros(len(x), device=x.device, dtype=torch.long)
        eps0 = model(x, zeros, class_labels=y).sample
        xt = a.sqrt() * x + (1 - a).sqrt() * eps0
        pred = model(xt, torch.full_like(zeros, t), class_labels=y).sample
        return (pred - eps0).abs().pow(4).flatten(1).sum(1).pow(0.25)

    model.eval()
    return AttackResult(scores=(-batched(one_batch, x0, labels)).double().cpu().numpy())
