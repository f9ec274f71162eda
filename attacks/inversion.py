"""``inversion``: gradient inversion of one client's update by an honest-but-curious server
(Geiping et al. 2020, "Inverting Gradients - How easy is it to break privacy in federated
learning?"; for diffusion models, GIDM: Huang et al. 2024, "Gradient Inversion of Federated
Diffusion Models").

Threat model: the server follows the protocol but is curious. It knows the model it sent
(weights, architecture, noise schedule), the client's batch size, number of local steps, learning
rate and class labels (labels leak easily and are assumed known: the stronger adversary), and it
observes exactly what the protocol hands it: one client's update. It wants that client's images.

Two kinds of update:

* ``gradient`` - FedSGD: one gradient of the mean denoising loss on a batch of 1 to 8 images;
* ``fedavg``  - a multi-step FedAvg delta: ``local_steps`` SGD steps on the batch, ``w_end - w_start``.

What the server sees under each DP mode (raw; DP-SGD steps under local DP; under central DP the
update before the server's own noise, clipped where clipping is client-side) is built by the
referee (``attacks.observe``), not by the attack: the attack gets only that observation.

A DDPM's loss also depends on the client's Gaussian noise and timestep per image. Whether the
server knows them is a second axis of the threat model (``randomness``):

* ``known`` (GIDM's setting; the observation carries the client's replayed randomness): the
  server can replay the client's diffusion noise and timesteps. In this benchmark's own
  federation that is the default, because a client's training seed derives
  from the run seed (``benchmark.federation.client_app.client_train_seed``). The attacker then
  solves for the images alone: L-BFGS (strong Wolfe line search) on the squared distance between
  the dummy update and the observed one (``1 - cos`` where the update was clipped, since the
  clipping factor is unknown), from a random start. The DP noise is *not* given to this attacker,
  and no one can replay it: DP noise and Poisson batches are always drawn from OS entropy, never
  from the run seed (:mod:`privacy.noise`).
* ``secret`` (GIDM+; the observation carries none): a SuperNode with ``secret-randomness=true``.
  The attacker optimises dummy images *and* dummy noise and (continuous) timesteps to minimise
  ``1 - cos(dummy update, observed update)`` plus a total-variation prior, with Adam from random starts. For a FedSGD
  gradient the timesteps are first read off the time embedding's first Linear layer: its weight
  gradient is ``sum_i delta_i emb(t_i)^T`` and its bias gradient ``sum_i delta_i``, so for one
  image ``emb(t) = dW[j] / db[j]`` exactly, and for B images the B integer timesteps whose
  sinusoidal embeddings lie closest to the row space of ``dW`` are taken.

What a tiny UNet's batch-1 gradient gives up (``tests/test_attacks_e2e.py``): with known
randomness the image comes back almost exactly without DP (PSNR above 40 dB) and not at all under
DP-SGD (sigma 1); with secret randomness the noise and image are not separated at these budgets
(the update is matched, cosine about 0.9, but the image is not: PSNR about 7 dB). Given the true
``x_t`` the noise is a linear least-squares solution (the gradient is affine in it), so the
difficulty is the joint, non-convex search, as GIDM+ reports for larger images.

The attack returns the reconstructions; the referee scores them against the true images (PSNR and
SSIM, ``attacks.base.match_scores``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from attacks.base import AttackBudget, AttackError, AttackResult, ClientUpdateObservation, ObservedUpdate
from attacks.observe import RANDOMNESS, diffusion_loss, model_params

TV_WEIGHT = 0.1
INVERSION_LR = 0.1


def run(observation: ClientUpdateObservation, budget: AttackBudget, generator: torch.Generator) -> AttackResult:
    """Reconstruct the client's images from the observed update: the ``known`` attacker where the
    observation carries the client's replayed randomness, the ``secret`` one where it does not."""
    randomness = "known" if observation.update.replayed is not None else "secret"
    device = next(observation.model.parameters()).device
    recon, cos = invert(observation.model, observation.scheduler, observation.update, shape=observation.image_shape,
                        budget=budget, generator=generator, device=device, randomness=randomness)
    return AttackResult(reconstructions=recon, stats={"update_cosine": cos})


# The adversary ----------------------------------------------------------------------------------
def _tv(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def invert(model, scheduler, update: ObservedUpdate, *, shape: tuple[int, int, int], budget: AttackBudget,
           generator: torch.Generator, device: str | torch.device = "cpu",
           randomness: str = "known") -> tuple[np.ndarray, float]:
    """Reconstruct the client's images (uint8 NCHW) from ``update``; also return the cosine
    similarity between the best dummy update and the observed one (how well the attacker could
    explain what it saw). Only the update, the model, the protocol facts in it and, for
    ``randomness="known"``, the client's replayed diffusion randomness are used.
    ``budget.inversion_iters`` counts objective evaluations (each one a dummy update and its
    gradient), restarts ``budget.inversion_restarts`` times, keeping the best match."""
    if randomness not in RANDOMNESS:
        raise AttackError(f"unknown inversion randomness {randomness!r} (known: {', '.join(RANDOMNESS)})")
    if randomness == "known" and update.replayed is None:
        raise AttackError("the known-randomness attacker needs the client's replayed noise and timesteps")
    model.eval()
    acp = scheduler.alphas_cumprod.to(device, torch.float32)
    T = scheduler.config.num_train_timesteps
    start = model_params(model)
    names = list(start)
    target = torch.cat([update.tensors[k].flatten() for k in names]).to(device)
    best, best_obj, best_cos = None, float("inf"), float("nan")
    restart = _restart_known if randomness == "known" else _restart_secret
    # Gradient matching differentiates the gradient (double backward); the fused SDPA kernels
    # (flash / memory-efficient attention, CPU and CUDA) have no double backward: use the math one.
    with sdpa_kernel(SDPBackend.MATH):
        for _ in range(budget.inversion_restarts):
            obj, cos, x = restart(model, acp, T, start, names, target, update, shape, budget, generator, device)
            if obj < best_obj:
                best_obj, best, best_cos = obj, x, cos
    return ((best.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy(), best_cos


def _dummy_update(model, acp, start, names, update, x, noise, t) -> torch.Tensor:
    """The flattened update the client would send for images ``x``, noise ``(K, B, ...)`` and
    timesteps ``(K, B)``, differentiable in all three (the victim's computation, unclipped)."""
    params = dict(start)
    for k in range(update.local_steps if update.kind == "fedavg" else 1):
        p = {n: w if w.requires_grad else w.detach().requires_grad_(True) for n, w in params.items()}
        loss = diffusion_loss(model, p, acp, x, noise[k], t[k], update.labels).mean()
        g = torch.autograd.grad(loss, [p[n] for n in names], create_graph=True)
        if update.kind == "gradient":
            return torch.cat([gi.flatten() for gi in g])
        params = {n: p[n] - update.lr * gi for n, gi in zip(names, g)}
    return torch.cat([(params[n] - start[n]).flatten() for n in names])


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm() + 1e-12)


def _restart_known(model, acp, T, start, names, target, update, shape, budget, generator, device):
    """Known noise and timesteps: L-BFGS on the images alone from one random start."""
    noise = update.replayed.noise.to(device, torch.float32)
    t = update.replayed.timesteps.to(device, torch.float32)
    x = torch.randn((update.batch_size, *shape), generator=generator, device=device).mul_(0.5).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=budget.inversion_iters, max_eval=budget.inversion_iters,
                            history_size=50, tolerance_grad=0.0, tolerance_change=0.0,
                            line_search_fn="strong_wolfe")
    tsq = target.pow(2).sum() + 1e-30

    def mismatch(dummy: torch.Tensor) -> torch.Tensor:
        # The exact scale is known without clipping; a clipped update's factor is not: match direction.
        return (dummy - target).pow(2).sum() / tsq if update.clip is None else 1 - _cos(dummy, target)

    def objective():
        opt.zero_grad(set_to_none=True)
        obj = mismatch(_dummy_update(model, acp, start, names, update, x, noise, t))
        obj.backward()
        return obj

    opt.step(objective)
    x = x.detach()
    dummy = _dummy_update(model, acp, start, names, update, x, noise, t).detach()  # where L-BFGS ended
    return float(mismatch(dummy)), float(_cos(dummy, target)), x


def timesteps_from_gradient(model, update: ObservedUpdate, T: int) -> torch.Tensor:
    """The B integer timesteps of a FedSGD gradient, read off the time embedding's first Linear
    layer (exact for one image without DP; see the module docstring). Returns ``(B,)`` floats."""
    w = update.tensors["time_embedding.linear_1.weight"].double()
    emb = model.time_proj(torch.arange(T, device=w.device)).double()          # (T, d)
    _, _, vh = torch.linalg.svd(w, full_matrices=False)
    basis = vh[: update.batch_size]                                           # row space of dW
    resid = (emb - (emb @ basis.T) @ basis).norm(dim=1) / emb.norm(dim=1)
    return resid.argsort()[: update.batch_size].sort().values.to(torch.float32)


def _restart_secret(model, acp, T, start, names, target, update, shape, budget, generator, device):
    """Secret noise and timesteps: Adam on images, noise and timesteps (GIDM+), one random start."""
    B, K = update.batch_size, update.local_steps if update.kind == "fedavg" else 1
    u = torch.randn((B, *shape), generator=generator, device=device).mul_(0.1).requires_grad_(True)
    eps = torch.randn((K, B, *shape), generator=generator, device=device).requires_grad_(True)
    if update.kind == "gradient":   # the timesteps are in the gradient: read them off, keep them
        t_fixed = timesteps_from_gradient(model, update, T).to(device).view(1, B)
        opt_vars = [u, eps]
    else:
        v = torch.zeros((K, B), device=device).requires_grad_(True)
        opt_vars = [u, eps, v]
    opt = torch.optim.Adam(opt_vars, lr=INVERSION_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, budget.inversion_iters)
    for _it in range(budget.inversion_iters):
        x = torch.tanh(u)
        t = t_fixed if update.kind == "gradient" else torch.sigmoid(v) * (T - 1)
        dummy = _dummy_update(model, acp, start, names, update, x, eps, t)
        cos = _cos(dummy, target)
        obj = 1 - cos + TV_WEIGHT * _tv(x)
        opt.zero_grad(set_to_none=True)
        obj.backward()
        opt.step()
        sched.step()
    return float(obj.detach()), float(cos.detach()), torch.tanh(u).detach()
