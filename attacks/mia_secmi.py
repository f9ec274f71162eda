"""``mia-secmi``: SecMI's t-error from deterministic DDIM inversion (Duan et al. 2023, "Are
Diffusion Models Vulnerable to Membership Inference Attacks?", ICML; the SecMI-stat variant).

Threat model: the adversary holds the final global model, white box (weights, architecture, the
training noise schedule), and a candidate image with its class label, and wants to know whether
the candidate was in some client's training data. Nothing of the training is observed.

Attack: the deterministic DDIM map ``x_t -> x_s`` (``x0_hat = (x_t - sqrt(1-a_t) eps_theta(x_t,t))
/ sqrt(a_t)``, ``x_s = sqrt(a_s) x0_hat + sqrt(1-a_s) eps_theta(x_t,t)``) is run *forward*
(inversion) from the candidate x_0 to ``x_{t_sec}`` in steps of k, one step further to
``x_{t_sec+k}``, then one step *back* to ``x~_{t_sec}``. A model that fits the candidate well
inverts it consistently, so the t-error ``||x~_{t_sec} - x_{t_sec}||^2`` is smaller for members.
Score = minus the t-error: higher = member. t_sec and k come from the budget (SecMI: t_sec=100,
k=10 of 1000 steps).
"""

from __future__ import annotations

import torch

from attacks.base import AttackBudget, AttackResult, FinalModelObservation, batched, timestep_index


def ddim_map(model, acp: torch.Tensor, x: torch.Tensor, t: int, s: int, y) -> torch.Tensor:
    """The deterministic DDIM step from timestep t to timestep s (either direction)."""
    tt = torch.full((len(x),), t, device=x.device, dtype=torch.long)
    eps = model(x, tt, class_labels=y).sample
    a_t, a_s = acp[t], acp[s]
    x0_hat = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * eps


@torch.no_grad()
def run(observation: FinalModelObservation, budget: AttackBudget, generator: torch.Generator) -> AttackResult:
    """One score per candidate (higher = member)."""
    model, scheduler, x0, labels = observation.model, observation.scheduler, observation.images, observation.labels
    T = scheduler.config.num_train_timesteps
    k = timestep_index(budget.secmi_k, T)
    t_sec = max(k, (timestep_index(budget.secmi_t, T) // k) * k)
    if t_sec + k >= T:
        t_sec = ((T - 1 - k) // k) * k
    acp = scheduler.alphas_cumprod.to(x0.device, x0.dtype)  # acp[0] ~ 1: x_0 is read as step 0

    def one_batch(x, y):
        z = x
        for i in range(0, t_sec, k):
            z = ddim_map(model, acp, z, i, i + k, y)
        x_t = z
        x_next = ddim_map(model, acp, x_t, t_sec, t_sec + k, y)
        x_back = ddim_map(model, acp, x_next, t_sec + k, t_sec, y)
        return (x_back - x_t).pow(2).flatten(1).sum(1)

    model.eval()
    return AttackResult(scores=(-batched(one_batch, x0, labels)).double().cpu().numpy())
