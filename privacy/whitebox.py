"""White-box gradient canaries inside a client's DP-SGD: what the one-run audit of a local DP-SGD row
scores (Steinke, Nasr, Jagielski 2023, the white-box setting: Dirac gradient canaries, one run).

The audited client (partition 0) carries ``m`` canaries. Canary ``j`` is a *Dirac gradient*: the
vector ``CANARY_NORM_X * C * e_j`` in an **audit block** of ``m`` coordinates released beside the
model's gradient, far above the clipping norm ``C``, so that only the step's clipping brings it to
``C`` (a missing clip shows as a contribution 1000 times too large). Each canary is included by an
independent fair coin (:func:`canary_coins`, from the run seed: the audit's randomness, never the
mechanism's). Included canaries join the client's dataset *as indices*: the step's own Poisson
sampler (Opacus' ``UniformWithReplacementSampler``, the plan's rate and steps) draws them exactly
like a real image, and each drawn canary contributes its clipped gradient, computed with the
step's own clip norm and factor rule (:func:`privacy.dpsgd.clip_factors`, margin included). The
audit block then receives noise from the step's own optimizer, in the same ``add_noise`` call as
the model's parameters, with the same function (Opacus' ``_generate_noise``), standard deviation
(``noise_multiplier * max_grad_norm``), generator and secure mode (:class:`AuditBlock`, attached
to the optimizer by :func:`privacy.dpsgd.dp_train_epochs` and released by its ``add_noise``). The released noisy block of a step is a post-processing-free
output of the mechanism the accountant charges, so a canary's score, the sum of the released
block along its coordinate over every step of every round, is a valid one-run statistic: under
(epsilon, delta)-DP for one image the guesses it gives obey the one-run bound
(:mod:`attacks.audit`).

Why a block beside the model and not coordinates of the UNet (what Steinke et al. do): ``m``
Dirac canaries of norm ``C`` sampled at rate ``q`` move ``q m / 2`` model coordinates by ``C``
every step, which at ``m = 1000`` outweighs the real images' clipped sum (at most ``B C``) and
would change the row's utility. The block changes nothing the model computes, and it tests what
the claim rests on: the clip norm and factor, the noise multiplier and its generator, the sampling
rate and the number of steps. What it cannot test: a defect confined to the model's own
parameters (noise skipped for one layer, a per-sample norm that misses a layer);
``bench verify-dp`` checks those against a per-sample loop before every run.

What the bounds can reach (every guess right): with ``delta = 1e-5`` the (eps, delta) one-run
bound's ``2 m delta`` term caps it near 4.5 whatever m (:func:`attacks.audit.one_run_epsilon`); the
f-DP one-run bound on the same scores (:mod:`attacks.fdp`) reaches about 7.5 at m = 1,000 and 10.5
at m = 10,000, the standard suites' m.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from benchmark.seeding import derive_seed

CANARY_NORM_X = 1000.0    # a canary's gradient norm, in units of the clipping norm C
AUDITED_PARTITION = 0     # the client whose DP-SGD carries the canaries (as for the black-box canaries)
SCORES_KEY = "whitebox-scores"       # a reply's metric: this round's per-canary sums (float list)


def canary_coins(m: int, seed: int) -> np.ndarray:
    """Which of the ``m`` canaries are included (a fair coin each), from the run seed."""
    if m < 0:
        raise ValueError(f"gradient canaries must be >= 0, got {m}")
    return np.random.default_rng(derive_seed("whitebox-canary-coins", seed)).random(m) < 0.5


def recorded_canaries(record: dict, seed: int, *, name: str, unit: str) -> list:
    """The white-box canaries a run's ``privacy`` record holds (``whitebox``: their summed scores and
    the rate and steps of the Poisson-sampled Gaussian they went through), with the run seed's coins,
    as the audit takes them (:class:`privacy.mechanisms.base.Canaries`); none without a record."""
    from privacy.mechanisms.base import Canaries

    wb = record.get("whitebox")
    if not wb:
        return []
    scores = np.asarray(wb["scores"], dtype=np.float64)
    shape = {"sample_rate": float(wb["sample_rate"]), "steps": int(wb["steps"])}
    # The guess design the canaries were planted with (a record without one: two-sided), and the
    # audit statistic where it is not the plain sum (privacy.canary_clients).
    audit = np.asarray(wb["audit_scores"], dtype=np.float64) if "audit_scores" in wb else None
    return [Canaries(name, scores, canary_coins(len(scores), seed), shape, unit, wb.get("guess_sides", "both"), audit)]


@dataclass
class AuditBlock:
    """The released audit block of one client's DP-SGD (module docstring).

    ``included``: the canaries in this client's data (the coins); ``summed``: the clipped sum of the
    canaries drawn this step (set by :meth:`accumulate`, then noised by the optimizer's
    ``add_noise``); ``scores``: the sum of every released block so far (one entry per canary)."""

    included: np.ndarray
    canary_norm: float
    summed: torch.Tensor | None = None
    scores: torch.Tensor = field(default=None)  # float64 running sums, one per canary
    steps: int = 0

    def __post_init__(self) -> None:
        import torch

        self.included_ids = np.flatnonzero(self.included)
        if self.scores is None:
            self.scores = torch.zeros(len(self.included), dtype=torch.float64)

    @property
    def m(self) -> int:
        return len(self.included)

    def accumulate(self, drawn: np.ndarray, clip_norm: float, margin: float, device: torch.device) -> None:
        """The clipped sum of the drawn canaries (``drawn``: positions in ``included_ids``), each
        through the step's clip factor rule (:func:`privacy.dpsgd.clip_factors`) at its clip norm."""
        import torch

        from privacy.dpsgd import clip_factors

        self.summed = torch.zeros(self.m, dtype=torch.float32, device=device)
        if len(drawn):
            norms = torch.full((len(drawn),), self.canary_norm, dtype=torch.float32, device=device)
            factor = clip_factors(norms, clip_norm, margin)
            self.summed[torch.as_tensor(self.included_ids[drawn], device=device)] = factor * self.canary_norm

    def release(self, noise: torch.Tensor) -> None:
        """The step's released block (clipped sum + the optimizer's noise), added to the scores."""
        import torch

        if self.summed is None:
            raise RuntimeError("audit block released before its canaries were accumulated")
        self.scores += (self.summed + noise).detach().to("cpu", torch.float64)
        self.summed = None
        self.steps += 1

    def take_scores(self) -> list[float]:
        """The scores so far (for a reply), and start again from zero."""
        out = self.scores.tolist()
        self.scores.zero_()
        return out
