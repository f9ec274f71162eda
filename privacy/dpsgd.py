"""Local DP-SGD (sample-level DP) for one federated client, through Opacus.

Each client trains with Opacus (through :func:`make_dp_step`): Poisson sampling at rate
``1 / ceil(n / batch_size)`` (the plan's, below),
per-sample clipping to ``max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm``.
The noise is calibrated once per client so that its spend over *every round it could take part
in* (all ``rounds``, each ``local_epochs`` epochs) stays within ``target_epsilon`` at ``delta``.
The plan (:func:`plan_local_dp`) fixes ``steps_per_epoch`` and ``sample_rate = 1 / steps_per_epoch``;
the Poisson sampler runs exactly that many steps at exactly that rate (not Opacus' ``int(1 / q)``,
which float rounding makes one short for some n), and the accountant is charged exactly
``(noise_multiplier, sample_rate, steps)`` (checked after every round). The client keeps its
accountant's history in its Flower context and reports its spend; the server recomputes every
client's spend from the plan and the rounds it sampled the client in, and that figure is the one
published (:mod:`privacy.ledger`).

The Poisson sampling and the Gaussian noise are secret: their generators are seeded from OS
entropy (:mod:`privacy.noise`), never from the run seed, so published results cannot replay them.
The run seed (``seed``) drives only the diffusion noise and timesteps.

Grad-sample modes (:mod:`privacy.modes`): ``hooks`` (per-sample gradients), ``ghost`` (Opacus'
ghost clipping: norms without materialising per-sample gradients where a norm sampler exists, then
a second backward), ``mixed-ghost`` and ``mixed-ghost-bk`` (:mod:`privacy.mixed_ghost`: per-layer
cost-chosen ghost norms for Conv2d/Linear/GroupNorm, then Opacus' second backward resp.
book-keeping with one backward). All run with the Conv2d fix of :mod:`privacy.grad_samplers`
(:func:`make_dp_step` installs it) and
pass ``bench verify-dp``.

:func:`make_dp_step` is the one door to a DP-SGD step: training (:func:`dp_train_epochs`),
``bench verify-dp`` (:mod:`privacy.verify`) and ``bench perf`` (:mod:`benchmark.perf`) all build
theirs through it, so what is verified and what is timed is what trains. It does what Opacus'
``PrivacyEngine.make_private`` does to the module and the optimizer (validate, wrap through the
mode's registry entry, Opacus' optimizer class for the mode's family); training adds the
accountant's step hook and the Poisson loader, as ``make_private`` would.

Noise multiplicity (DPDM, Dockhorn et al. 2023): K noise/timestep draws per image, whose
per-sample gradients are averaged *before* clipping. One image is still one privacy unit, so the
accounting is unchanged; the averaged gradient has lower variance. Supported in ``hooks`` mode.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from benchmark.model import diffusion_loss, make_scheduler, to_model_range
from privacy import grad_samplers
from privacy.accounting import sample_level_noise
from privacy.mixed_ghost import dp_backward, quiet_output_hooks
from privacy.modes import GradSampleMode, ModeError, get_grad_sample_mode, grad_sample_mode_names

# Clip margin per norm precision: a DP step clips to C / (1 + margin), so that a per-sample norm
# computed up to that relative error still leaves every contribution <= C. The noise std and the
# accountant keep C (the sensitivity is then over-, never under-estimated). float32/float64: 0, so
# CPU figures are unchanged (norms agree to ~1e-7, Opacus' +1e-6 in the factor covers the rest).
# TF32 (CUDA convolutions by torch's default, cudnn.allow_tf32 = True; matmuls when enabled):
# 10-bit mantissas, unit roundoff 2^-11; ghost and mixed-ghost norms off by ~1e-3 relative:
# 2^-7 ~ 7.8e-3 leaves a factor ~8. bf16 autocast (perf/verify --amp bf16 only, never
# training): 8-bit mantissas, norms agree to AMP_TOL = 3e-2 of privacy.verify: 2^-5 ~ 3.1e-2.
CLIP_MARGINS = {"float64": 0.0, "float32": 0.0, "tf32": 2.0 ** -7, "bf16": 2.0 ** -5}


def norm_precision(device: str | torch.device, dtype: torch.dtype, *, amp: str | None = None) -> str:
    """The arithmetic a DP step's per-sample norms come from, a key of ``CLIP_MARGINS``: ``bf16``
    under bf16 autocast (or bf16/fp16 weights), ``tf32`` for float32 on CUDA while cuDNN's or
    cuBLAS's TF32 flag is on (read now: a step built under them), else the weights' dtype."""
    if amp is not None or dtype in (torch.bfloat16, torch.float16):
        return "bf16"
    if dtype == torch.float64:
        return "float64"
    if torch.device(device).type == "cuda" and (torch.backends.cudnn.allow_tf32
                                                or torch.backends.cuda.matmul.allow_tf32):
        return "tf32"
    return "float32"


def precision_margin(precision: str) -> float:
    """The clip margin for norms computed in ``precision`` (``CLIP_MARGINS``)."""
    try:
        return CLIP_MARGINS[precision]
    except KeyError:
        raise ValueError(f"unknown norm precision {precision!r} (known: {', '.join(CLIP_MARGINS)})") from None


def margin_clip_norm(max_grad_norm: float, margin: float) -> float:
    """The norm a DP step clips to: ``max_grad_norm / (1 + margin)`` (exactly ``max_grad_norm`` at 0)."""
    if margin < 0:
        raise ValueError(f"clip margin must be >= 0, got {margin}")
    return max_grad_norm / (1.0 + margin)


def clip_factors(norms: torch.Tensor, max_grad_norm: float, margin: float = 0.0) -> torch.Tensor:
    """Per-sample clip factors as Opacus computes them (``C / (norm + 1e-6)``, at most 1), at the
    margin's clipping norm: ``factor_i * true_norm_i <= max_grad_norm`` whenever the computed norm
    is at least ``true_norm_i / (1 + margin)``."""
    return (margin_clip_norm(max_grad_norm, margin) / (norms + 1e-6)).clamp(max=1.0)


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


@functools.lru_cache(maxsize=1024)  # a pure function; calibration searches the accountant (1-3 s)
def plan_local_dp(*, n_train: int, batch_size: int, rounds: int, local_epochs: int, target_epsilon: float,
                  delta: float, max_grad_norm: float, accountant: str = "rdp",
                  grad_sample_mode: str = "hooks", noise_multiplicity: int = 1) -> LocalDPPlan:
    """Calibrate the noise for a client with ``n_train`` images (worst case: every round).

    Cached per process: a client calls it every round and the server once per party, and each
    calibration is a binary search over the accountant (1-3 s on a CPU; it was most of a DP round
    of the cpu privacy suite). The plan is frozen, so sharing it is safe."""
    if n_train < 1:
        raise ValueError("a DP-SGD client needs at least one training image")
    mode = get_grad_sample_mode(grad_sample_mode)
    if noise_multiplicity < 1:
        raise ValueError("noise_multiplicity must be >= 1")
    _check_multiplicity(mode, noise_multiplicity)
    # The sampler runs exactly steps_per_epoch steps at exactly this rate (poisson_loader).
    steps_per_epoch = math.ceil(n_train / batch_size)
    sample_rate = 1.0 / steps_per_epoch
    max_steps = rounds * local_epochs * steps_per_epoch
    sigma = sample_level_noise(target_epsilon=target_epsilon, sample_rate=sample_rate, steps=max_steps,
                               delta=delta, accountant=accountant)
    return LocalDPPlan(sigma, sample_rate, max_grad_norm, steps_per_epoch, max_steps, target_epsilon, delta,
                       accountant, grad_sample_mode, noise_multiplicity)


def expected_batch_size(plan: LocalDPPlan, n_train: int) -> int:
    """The batch size the DP optimizer divides by (Opacus' ``int(n * q)``, computed exactly: for
    some n, ``n * (1 / steps)`` rounds below the integer ``n / steps``)."""
    return max(1, n_train // plan.steps_per_epoch)


def poisson_loader(plan: LocalDPPlan, dataset: torch.utils.data.Dataset,
                   generator: torch.Generator) -> torch.utils.data.DataLoader:
    """Opacus' Poisson loader (``DPDataLoader``: its sampler and empty-batch collate), with the
    plan's ``sample_rate`` and exactly ``plan.steps_per_epoch`` batches per epoch."""
    from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from torch.utils.data._utils.collate import default_collate

    sampler = UniformWithReplacementSampler(num_samples=len(dataset), sample_rate=plan.sample_rate,
                                            generator=generator, steps=plan.steps_per_epoch)
    first = dataset[0]
    collate = wrap_collate_with_empty(collate_fn=default_collate, batch_first=True,
                                      sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
                                      dtypes=[dtype_safe(x) for x in first])
    # generator here too, as DPDataLoader does: each epoch's iterator draws its base seed from it,
    # not from torch's global RNG.
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=generator)


class PoissonIndices:
    """The index batches of :func:`poisson_loader` over ``TensorDataset(arange(n))``, draw for draw
    (the same sampler and generator, and per epoch the one draw a DataLoader's iterator takes from
    its generator for its workers' base seed), without fetching and collating every drawn index one
    by one: with 10,000 white-box canaries a step draws some 1,700 indices, and that per-index
    fetch alone cost 0.3 s a round on a 2-core CPU (``tests/test_whitebox.py`` checks the draws)."""

    def __init__(self, plan: LocalDPPlan, n: int, generator: torch.Generator):
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        self.generator = generator
        self.sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=plan.sample_rate,
                                                     generator=generator, steps=plan.steps_per_epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        batches = iter(self.sampler)
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # DataLoader's base seed
        for indices in batches:
            yield torch.as_tensor(indices, dtype=torch.long)


def _check_multiplicity(mode: GradSampleMode, k: int) -> None:
    if k > 1 and not mode.supports_noise_multiplicity:
        able = [n for n in grad_sample_mode_names() if get_grad_sample_mode(n).supports_noise_multiplicity]
        raise ModeError(f"noise_multiplicity > 1 needs grad_sample_mode {' or '.join(map(repr, able))} "
                        f"(per-sample gradients), not {mode.name!r}")


class DPStep:
    """One DP-SGD step's machinery around a model: Opacus' grad-sample ``module`` (forward through
    it), its DP ``optimizer``, and ``backward(per_sample_loss)`` for the mode's family."""

    def __init__(self, mode: GradSampleMode, module: torch.nn.Module, optimizer, *, precision: str = "float32",
                 clip_margin: float = 0.0, clip_norm: float | None = None):
        self.mode, self.module, self.optimizer = mode, module, optimizer
        self.precision, self.clip_margin = precision, clip_margin
        # What the per-sample factors clip to (<= optimizer.max_grad_norm, the sensitivity the noise uses).
        self.clip_norm = optimizer.max_grad_norm if clip_norm is None else clip_norm

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, per_sample_loss: torch.Tensor, *, multiplicity: int = 1) -> None:
        """Per-sample norms, clip factors and (ghost family) the clipped gradient sum, from the (B*K,)
        per-sample losses; ``multiplicity`` K > 1 averages each image's K per-draw gradients before
        clipping (needs a mode with per-sample gradients)."""
        if self.mode.ghost_family:
            _check_multiplicity(self.mode, multiplicity)
            dp_backward(self.module, self.optimizer, per_sample_loss)  # Opacus' double backward, or book-keeping
            return
        with quiet_output_hooks():
            per_sample_loss.mean().backward()
        if multiplicity > 1:
            _average_multiplicity(self.module, len(per_sample_loss) // multiplicity, multiplicity)

    def empty_batch(self) -> None:
        """An empty Poisson batch is still a step of the mechanism: zero gradients, then noise only."""
        for p in self.module.parameters():
            if p.requires_grad:
                if self.mode.ghost_family:
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)

    def step(self) -> None:
        self.optimizer.step()

    def close(self) -> None:
        """Remove Opacus' hooks from the (shared) model."""
        self.module._close()


def make_dp_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, grad_sample_mode: str,
                 max_grad_norm: float, noise_multiplier: float, expected_batch_size: int,
                 noise_generator: torch.Generator | None = None, secure_mode: bool = True,
                 amp: str | None = None, clip_margin: float | None = None, plant=None) -> DPStep:
    """The one construction path of a DP-SGD step (training, ``bench verify-dp``, ``bench perf``).

    What ``PrivacyEngine.make_private`` does to the module and optimizer, for every registered
    grad-sample mode: Opacus' module validation, the mode's ``wrap`` (:mod:`privacy.modes`), and
    Opacus' optimizer class for its family (``DPOptimizerFastGradientClipping`` for the ghost
    family, ``DPOptimizer`` otherwise), mean loss reduction. Noise std is
    ``noise_multiplier * max_grad_norm / expected_batch_size``, drawn from ``noise_generator``
    (training passes a secret one, :func:`privacy.noise.secret_torch_generator`) with Opacus'
    optimizer-side ``secure_mode`` (each value the halved sum of four Gaussians, against
    floating-point attacks; it needs no ``torchcsprng``).

    Precision margin: per-sample norms are only as exact as the arithmetic that computes
    them, and on CUDA that is TF32 for convolutions by torch's default (``cudnn.allow_tf32``), so
    ghost-family norms can be ~1e-3 low and a clipped contribution ~1e-3 above C. Every mode
    therefore clips to ``max_grad_norm / (1 + margin)`` (:func:`margin_clip_norm`), the margin
    being ``CLIP_MARGINS[norm_precision(...)]`` for the model's device and dtype, the TF32 flags
    as they are *now* and ``amp`` (0 for float32 without TF32 and float64: CPU steps are unchanged;
    ``clip_margin`` overrides it). The noise std and ``optimizer.noise_multiplier`` (what the
    accountant reads) stay at ``max_grad_norm``: the sensitivity used is C, an over-estimate.

    ``plant``: a :class:`privacy.plants.Plant` (auditing the audit only): its noise factor scales the
    noise actually drawn, ``unclipped`` clips to infinity; the accountant still reads the plan.
    """
    from opacus.optimizers import get_optimizer_class
    from opacus.validators import ModuleValidator

    mode = get_grad_sample_mode(grad_sample_mode)
    params = set(model.parameters())
    if any(p not in params for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("the optimizer's parameters are not the model's")
    ModuleValidator.validate(model, strict=True)
    first = next(iter(params), None)
    precision = norm_precision(first.device if first is not None else "cpu",
                               first.dtype if first is not None else torch.float32, amp=amp)
    margin = precision_margin(precision) if clip_margin is None else clip_margin
    clip_norm = float("inf") if plant is not None and plant.unclipped else margin_clip_norm(max_grad_norm, margin)
    grad_samplers.install()  # the Conv2d fix every mode's per-sample gradients or norms rely on
    module = mode.wrap(model, max_grad_norm=clip_norm)  # the ghost family's clip factors (get_clipping_coef)
    optim_class = _margin_clipped(get_optimizer_class(clipping="flat", distributed=False,
                                                      grad_sample_mode="ghost" if mode.ghost_family else "hooks"))
    dp_optimizer = optim_class(optimizer=optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                               expected_batch_size=expected_batch_size, loss_reduction="mean",
                               generator=noise_generator, secure_mode=secure_mode)
    dp_optimizer.clip_norm = clip_norm
    if plant is not None:
        dp_optimizer.plant_noise_factor = plant.noise_factor
    return DPStep(mode, module, dp_optimizer, precision=precision, clip_margin=margin, clip_norm=clip_norm)


@functools.cache
def _margin_clipped(optim_class: type) -> type:
    """``optim_class`` whose per-sample clipping (``clip_and_accumulate``, the ``hooks`` family's)
    uses ``clip_norm`` while its noise (``noise_multiplier * max_grad_norm``) keeps ``max_grad_norm``;
    its ``add_noise`` also releases an attached ``audit_block`` (:mod:`privacy.whitebox`)."""

    def clip_and_accumulate(self) -> None:
        full, self.max_grad_norm = self.max_grad_norm, self.clip_norm
        try:
            optim_class.clip_and_accumulate(self)
        finally:
            self.max_grad_norm = full

    def add_noise(self) -> None:
        factor = getattr(self, "plant_noise_factor", 1.0)  # a planted defect (privacy.plants); else 1
        planned = self.noise_multiplier
        self.noise_multiplier = planned * factor  # restored before the accountant's step hook reads it
        try:
            optim_class.add_noise(self)
            block = getattr(self, "audit_block", None)
            if block is not None:  # white-box canaries (privacy.whitebox): the same noise, in the same call
                from opacus.optimizers.optimizer import _generate_noise

                multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
                block.release(_generate_noise(std=multiplier * self.max_grad_norm, reference=block.summed,
                                              generator=self.generator, secure_mode=self.secure_mode))
        finally:
            self.noise_multiplier = planned

    return type(optim_class.__name__, (optim_class,), {"clip_and_accumulate": clip_and_accumulate,
                                                       "add_noise": add_noise,
                                                       "__module__": __name__, "__doc__": _margin_clipped.__doc__})


def dp_train_epochs(model: torch.nn.Module, optimizer: torch.optim.Optimizer, plan: LocalDPPlan,
                    images: np.ndarray, labels: np.ndarray, *, epochs: int, num_train_timesteps: int,
                    conditional: bool, device: str | torch.device, seed: int,
                    accountant_history: list[tuple[float, float, int]],
                    sampling_generator: torch.Generator | None = None,
                    noise_generator: torch.Generator | None = None, canaries=None, plant=None) -> dict:
    """``epochs`` of DP-SGD on one client. Returns loss, steps, the accountant's new history and
    the epsilon spent so far (this round included).

    ``seed`` drives the diffusion noise and timesteps only. The Poisson sampling and the DP noise
    come from ``sampling_generator`` and ``noise_generator``; left out (as the client app always
    does) each is a fresh secret generator (:mod:`privacy.noise`). Tests pass seeded ones.

    ``canaries``: a :class:`privacy.whitebox.AuditBlock` (white-box gradient canaries). Its included
    canaries join the sampler's population as indices after the images (the plan's rate, so each is
    drawn like an image); every step releases the block through the optimizer (its scores grow).
    ``plant``: a planted defect (:mod:`privacy.plants`, auditing the audit): the sampler's rate, the
    noise drawn or the clipping differ from the plan while the accountant is charged the plan.
    """
    from opacus.accountants import create_accountant

    from privacy.noise import secret_torch_generator

    accountant = create_accountant(mechanism=plan.accountant)
    accountant.history = [tuple(h) for h in accountant_history]
    images_t, labels_t = torch.as_tensor(images), torch.as_tensor(labels)
    n = len(images_t)
    # The sampler draws indices: the images, then the included canaries (none: the same draws as a
    # loader over the images themselves).
    n_canaries = 0 if canaries is None else len(canaries.included_ids)
    drawn = plan if plant is None or plant.rate_factor == 1 else dataclasses.replace(
        plan, sample_rate=min(1.0, plan.sample_rate * plant.rate_factor))
    dp_loader = PoissonIndices(drawn, n + n_canaries, sampling_generator or secret_torch_generator("cpu"))
    dp = make_dp_step(model, optimizer, grad_sample_mode=plan.grad_sample_mode, max_grad_norm=plan.max_grad_norm,
                      noise_multiplier=plan.noise_multiplier, expected_batch_size=expected_batch_size(plan, n),
                      noise_generator=noise_generator or secret_torch_generator(device), plant=plant)
    if canaries is not None:
        dp.optimizer.audit_block = canaries
    dp.module.forbid_grad_accumulation()  # Poisson sampling: one batch per step
    dp.optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
    gsm = dp.module
    scheduler = make_scheduler(num_train_timesteps)
    gen = torch.Generator(device=device).manual_seed(seed + 2)
    k = plan.noise_multiplicity
    gsm.train()
    total, steps, seen = 0.0, 0, 0
    for _ in range(epochs):
        for idx in dp_loader:
            dp.zero_grad()
            if canaries is not None:
                canaries.accumulate((idx[idx >= n] - n).numpy(), dp.clip_norm, 0.0, gen.device)
            idx = idx[idx < n]
            xb, yb = images_t[idx], labels_t[idx]
            if len(xb) == 0:
                dp.empty_batch()
                dp.step()
                steps += 1
                continue
            x0 = to_model_range(xb).to(device)
            y = yb.to(device) if conditional else None
            if k > 1:
                x0 = x0.repeat_interleave(k, 0)
                y = y.repeat_interleave(k, 0) if y is not None else None
            per_loss = diffusion_loss(gsm, scheduler, x0, y, generator=gen, reduction="none")
            dp.backward(per_loss, multiplicity=k)
            dp.step()
            total += float(per_loss.detach().mean()) * len(xb)
            seen += len(xb)
            steps += 1
    dp.close()  # remove Opacus hooks from the (shared) model
    if canaries is not None:
        dp.optimizer.audit_block = None
    history = [tuple(h) for h in accountant.history]
    expected = charge(accountant_history, plan, epochs)
    if steps != epochs * plan.steps_per_epoch or history != expected:
        raise RuntimeError(f"DP-SGD ran {steps} steps with accountant history {history}, the plan charges "
                           f"{epochs * plan.steps_per_epoch} steps: {expected}")
    if not history:
        epsilon = 0.0
    elif plan.accountant == "rdp":  # Opacus' value, with the per-step RDP cached (privacy.accounting)
        from privacy.accounting import rdp_epsilon

        epsilon = rdp_epsilon(history, plan.delta)
    else:
        epsilon = float(accountant.get_epsilon(plan.delta))
    return {"loss": total / max(seen, 1), "steps": steps, "history": history, "epsilon": epsilon}


def charge(history: list[tuple[float, float, int]], plan: LocalDPPlan,
           epochs: int) -> list[tuple[float, float, int]]:
    """``history`` after ``epochs`` more epochs of ``plan``, as Opacus' accountants record it
    (consecutive steps with the same noise and rate merge into one entry)."""
    out = [tuple(h) for h in history]
    steps = epochs * plan.steps_per_epoch
    if steps == 0:
        return out
    if out and out[-1][:2] == (plan.noise_multiplier, plan.sample_rate):
        out[-1] = (plan.noise_multiplier, plan.sample_rate, out[-1][2] + steps)
    else:
        out.append((plan.noise_multiplier, plan.sample_rate, steps))
    return out


def _average_multiplicity(gsm: torch.nn.Module, batch: int, k: int) -> None:
    """(B*K, ...) per-draw gradients -> (B, ...) per-image gradients, before clipping."""
    for p in gsm.parameters():
        if p.requires_grad and p.grad_sample is not None:
            p.grad_sample = p.grad_sample.view(batch, k, *p.shape).mean(1)
