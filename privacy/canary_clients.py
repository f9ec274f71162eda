"""Canary clients: the white-box audit of a central DP row, at the level its epsilon is claimed for
(one client; Andrew et al., ICLR 2024, "One-shot empirical privacy estimation for federated
learning", canary clients in one training run; scored here with the one-run and f-DP bounds of
:mod:`attacks.audit`).

A central row with ``client_canaries = m`` has m canary clients besides its real ones. Canary
``j``'s update is a Dirac vector ``CANARY_NORM_X * C * e_j`` in an **audit block** of m coordinates
released beside the model (as for the local rows' gradient canaries, :mod:`privacy.whitebox`):
far above the clipping norm C, so that only the server's clip brings it to C. Each canary is in the
population by an independent fair coin (:func:`privacy.whitebox.canary_coins`, from the run seed,
the audit's randomness). An included canary takes part in a round exactly as the mechanism lets a
real client take part, and its update goes through the mechanism's own clip, sum and noise:

- ``central-dp-sampled`` (:class:`privacy.central_sampled.PoissonSampledDP`): each round, each
  included canary is drawn by the strategy's own Poisson sampler (its secret generator, its rate,
  a planted rate included), clipped by the strategy's own clip factor, and the block receives
  noise from the same generator at the same standard deviation as the model's sum.
- ``central-dp`` (Flower's fixed-clipping wrapper, :mod:`privacy.central`): the accountant charges
  every round in full to every client, as if every client took part in every round, so an
  included canary takes part in every round (the worst case the claim covers; the real clients'
  fixed-count draw is untouched). Each is clipped by Flower's own ``clip_inputs_inplace`` at the
  wrapper's clipping norm, averaged over the round's ``clients_per_round`` as Flower averages, and
  noised by the wrapper's own noise method (``_add_noise_to_aggregated_arrays``: the same
  generator and standard deviation as the model's average).

A canary's score is the released block along its coordinate, in units of the round's clipping norm
(so with adaptive clipping every round counts alike), summed over every release the accountant
charges. An included canary contributes 1 each round it takes part and the noise N(0, z^2) each
round: the claimed client-level mechanism exactly (``steps`` releases of a Gaussian of multiplier
z, Poisson-sampled at the client rate q or taking part every round), whose trade-off curve the f-DP
bound tests (:mod:`attacks.fdp`). A missing clip shows as contributions 1000 times too large,
missing noise as no spread, a faster sampler as more contributions than the rate allows.

Why a block and not canary updates in the model's coordinates (what Andrew et al. do): with
m = 10,000 canaries at rate 0.1 a thousand clipped updates would join about 20 real ones in every
round's sum and swamp the model. The block tests what the claim rests on (the clip, the noise
multiplier and its generator, the sampling rate, the number of releases); a defect confined to the
model's own arrays (noise skipped for one of them) it cannot see.

Torch-free (numpy only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from privacy.whitebox import CANARY_NORM_X

UNIT = "client"          # the claim canary clients test: one client's update in or out (zero)
NAME = "client-update"   # the test's name in attacks.json


@dataclass
class CanaryClients:
    """The canary clients of one run (module docstring): ``included`` are the coins; ``scores`` the
    running sums of the released block, one per canary; ``releases`` the rounds released."""

    included: np.ndarray
    sample_rate: float                  # the rate a canary takes part at (1.0: every round)
    scores: np.ndarray = field(default=None)
    releases: int = 0

    def __post_init__(self) -> None:
        self.included = np.asarray(self.included, dtype=bool)
        self.ids = np.flatnonzero(self.included)
        if self.scores is None:
            self.scores = np.zeros(len(self.included), dtype=np.float64)

    @property
    def m(self) -> int:
        return len(self.included)

    def draw(self, rng: np.random.Generator, rate: float) -> np.ndarray:
        """The included canaries that take part this round: each with probability ``rate`` from
        ``rng`` (the strategy's own sampler), all of them at rate 1."""
        if rate >= 1:
            return self.ids
        return self.ids[rng.random(len(self.ids)) < rate]

    def update_norm(self, clip: float) -> float:
        """The norm of every canary's update: far above the clipping norm."""
        return CANARY_NORM_X * clip

    def release(self, block: np.ndarray, clip: float) -> None:
        """Add one round's released block (clipped sum + noise, in the scale of the released sum)
        to the scores, in units of the round's clipping norm."""
        if block.shape != (self.m,):
            raise ValueError(f"canary block has shape {block.shape}, expected ({self.m},)")
        self.scores += np.asarray(block, dtype=np.float64) / clip
        self.releases += 1

    def record(self) -> dict:
        """history.json's ``privacy.whitebox`` entry (the audit reads it back: :func:`audit_entry`)."""
        return {"kind": NAME, "unit": UNIT, "m": self.m, "sample_rate": self.sample_rate,
                "steps": self.releases, "scores": self.scores.tolist()}


def audit_entry(record: dict, seed: int):
    """The :class:`privacy.mechanisms.base.Canaries` of a central row's ``privacy`` record, or None."""
    from privacy.whitebox import recorded_canaries

    found = recorded_canaries(record, seed, name=NAME, unit=UNIT)
    return found[0] if found else None
