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

What the server sees under each DP mode (this is the honest part of the comparison):

* ``none``: the raw update;
* ``local-dpsgd``: every step is a DP-SGD step - per-sample gradients clipped to C, Gaussian noise
  of std ``noise_multiplier * C`` added to their sum, divided by the batch size - as Opacus does;
* ``central-dp``: the server adds the noise itself, so it sees the update *before* its noise:
  clipped to C where clipping is client-side, raw where it is server-side. Central DP protects
  the released model from everyone else; it does not protect the update from the server.

A DDPM's loss also depends on the client's Gaussian noise and timestep per image. Whether the
server knows them is a second axis of the threat model (``randomness``):

* ``known`` (GIDM's setting): the server can replay the client's diffusion noise and timesteps.
  In this benchmark's own federation that is the default, because a client's training seed derives
  from the run seed (``benchmark.federation.client_app.client_train_seed``). The attacker then
  solves for the images alone: L-BFGS (strong Wolfe line search) on the squared distance between
  the dummy update and the observed one (``1 - cos`` where the update was clipped, since the
  clipping factor is unknown), from a random start. The DP noise is *not* given to this attacker:
  the DP rows assume it is secret, which in a real deployment needs ``secret-randomness=true``
  (otherwise a server that replays the seed can subtract it; see ``client_train_seed``).
* ``secret`` (GIDM+): a SuperNode with ``secret-randomness=true``. The attacker optimises dummy
  images *and* dummy noise and (continuous) timesteps to minimise ``1 - cos(dummy update,
  observed update)`` plus a total-variation prior, with Adam from random starts. For a FedSGD
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

Metrics: PSNR and SSIM (Gaussian 11x11 window, sigma 1.5, on [0, 1]) between each true image and
its best-matching reconstruction, averaged over the batch. LPIPS is not computed: its network
weights are a download this benchmark cannot make (a field says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from attacks.base import AttackBudget, AttackError, ThreatModel

THREAT_MODEL = ThreatModel(
    adversary="the honest-but-curious server",
    observes="one client's update (a FedSGD gradient or a multi-step FedAvg delta), after the "
             "client's own DP steps, before any server-side noise; the model it sent; batch size, "
             "local steps, learning rate and class labels; the client's diffusion noise and timesteps "
             "where it can replay the client's seed (the `known` attacker)",
    goal="reconstruct the client's training images",
)
KINDS = ("gradient", "fedavg")
RANDOMNESS = ("known", "secret")
TV_WEIGHT = 0.1
INVERSION_LR = 0.1


@dataclass
class ClientRandomness:
    """The client's diffusion randomness: noise ``(K, B, C, H, W)`` and timesteps ``(K, B)``, one
    row per local step. What a server that can replay the client's training seed knows."""

    noise: torch.Tensor
    timesteps: torch.Tensor


@dataclass
class ObservedUpdate:
    """What the server receives from the client (plus the protocol facts it knows: batch size,
    local steps, learning rate, labels, and the clipping bound ``clip`` if the protocol clips).
    ``replayed`` is the client's diffusion randomness, used only by the ``known`` attacker."""

    kind: str
    tensors: dict[str, torch.Tensor]
    batch_size: int
    local_steps: int
    lr: float
    labels: torch.Tensor | None
    clip: float | None = None
    replayed: ClientRandomness | None = None


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def _alpha_bar(acp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod at continuous timesteps (linear interpolation)."""
    lo = t.detach().floor().clamp(0, len(acp) - 2).long()
    w = t - lo.to(t.dtype)
    return acp[lo] * (1 - w) + acp[lo + 1] * w


def _loss(model, params, acp, x0, noise, t, labels) -> torch.Tensor:
    """Mean epsilon-prediction MSE; t may be continuous (the UNet's time embedding is)."""
    a = _alpha_bar(acp, t).view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    pred = functional_call(model, params, (xt, t), {"class_labels": labels}).sample
    return (pred - noise).pow(2).flatten(1).mean(1)


# The victim: what one client computes and sends ----------------------------------------------------
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
    start = _params(model)
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
            li = _loss(model, p, acp, x0[i:i + 1], noise[i:i + 1], t[i:i + 1].to(x0.dtype),
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


def _clipped(update: dict[str, torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
    norm = float(torch.sqrt(sum(v.pow(2).sum() for v in update.values())))
    return {k: v * min(1.0, clip / (norm + 1e-12)) for k, v in update.items()}


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
    start = _params(model)
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
        loss = _loss(model, p, acp, x, noise[k], t[k], update.labels).mean()
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


# Scores -----------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (peak 255)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) of two uint8 CHW images: 11x11 Gaussian window, sigma 1.5, K1=0.01,
    K2=0.03, on [0, 1], averaged over the valid window positions and channels."""
    x = torch.as_tensor(a, dtype=torch.float64)[None] / 255.0
    y = torch.as_tensor(b, dtype=torch.float64)[None] / 255.0
    c = x.shape[1]
    size = min(11, x.shape[-1], x.shape[-2])
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(c, 1, size, size)
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, w, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def match_scores(truth: np.ndarray, recon: np.ndarray) -> dict:
    """Each true image against its best reconstruction (by PSNR); means over the batch."""
    ps, ss = [], []
    for t in truth:
        cand = [psnr(t, r) for r in recon]
        j = int(np.argmax(cand))
        ps.append(cand[j])
        ss.append(ssim(t, recon[j]))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "lpips": None,
            "lpips_note": "LPIPS weights are not installed (no downloads); not computed"}
