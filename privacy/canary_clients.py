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
- ``central-dp-ftrl`` (:class:`privacy.central_ftrl.TreeFTRL`): each included canary takes part
  once per tree epoch, in its first round (the slot in the most released nodes), through the
  strategy's clip factor, into an audit block with its own tree of the same noise std from the same
  generator; scored by the log-likelihood ratio of the released prefix sums
  (:class:`TreeCanaryClients`), with two-sided guesses (every inclusion shows, in every epoch).
- ``central-dp`` (Flower's fixed-clipping wrapper, :mod:`privacy.central`): the accountant charges
  every round in full to every client, as if every client took part in every round, so an
  included canary takes part in every round (the worst case the claim covers; the real clients'
  fixed-count draw is untouched). Each is clipped by Flower's own ``clip_inputs_inplace`` at the
  wrapper's clipping norm, averaged over the round's ``clients_per_round`` as Flower averages, and
  noised by the wrapper's own noise method (``_add_noise_to_aggregated_arrays``: the same
  generator and standard deviation as the model's average).

A canary's score is the released block along its coordinate, in units of the round's clipping norm
(so with adaptive clipping every round counts alike), summed over every release the accountant
charges. Where the canaries are Poisson-sampled (``central-dp-sampled``) the audit reads a second
statistic, the log-likelihood ratio of each release under the *claimed* mechanism (drawn with
probability q and adding 1, or not, plus N(0, z^2); :func:`release_log_likelihood_ratio`), summed
over the releases: the Neyman-Pearson statistic for the claim's own model, which weighs a release
by how much it looks like a draw rather than adding noise and signal alike; any function of the
releases fixed before the run is a valid score. With its one-sided guesses (:attr:`guess_sides`) it
is what catches noise at 0.4 of the claimed one at the audit-power suite's q = 1/4 and 20 rounds
(attacks/audit.py, "Guess sides"). Every round taking part (``central-dp``), the ratio is a linear
function of the plain sum, which both tests read. An included canary contributes 1 each round it takes part and the noise N(0, z^2) each
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
    noise_multiplier: float | None = None   # the claimed z (units of C per release): the sampled audit statistic

    def __post_init__(self) -> None:
        self.included = np.asarray(self.included, dtype=bool)
        self.ids = np.flatnonzero(self.included)
        if self.scores is None:
            self.scores = np.zeros(len(self.included), dtype=np.float64)
        # Poisson-sampled canaries with a known claim: the audit's statistic is the log-likelihood
        # ratio of each release under the claimed mechanism (module docstring), summed.
        self.lr_scores = (np.zeros(len(self.included), dtype=np.float64)
                          if self.sample_rate < 1 and self.noise_multiplier else None)

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
        x = np.asarray(block, dtype=np.float64) / clip
        self.scores += x
        if self.lr_scores is not None:
            self.lr_scores += release_log_likelihood_ratio(x, self.sample_rate, self.noise_multiplier)
        self.releases += 1

    def record(self) -> dict:
        """history.json's ``privacy.whitebox`` entry (the audit reads it back: :func:`audit_entry`)."""
        out = {"kind": NAME, "unit": UNIT, "m": self.m, "sample_rate": self.sample_rate,
               "steps": self.releases, "scores": self.scores.tolist(), "guess_sides": self.guess_sides}
        if self.lr_scores is not None:
            out |= {"audit_scores": self.lr_scores.tolist(), "audit_statistic": "log-likelihood ratio, claimed "
                    f"q = {self.sample_rate:g}, z = {self.noise_multiplier:g}"}
        return out

    @property
    def guess_sides(self) -> str:
        """The audit's guess design (:mod:`attacks.audit`, "Guess sides"), fixed by the mechanism
        before the run: Poisson-sampled canaries (rate below 1, a few draws each) guess "in" on the
        highest scores only; canaries taking part in every release guess both ways."""
        return "in" if self.sample_rate < 1 else "both"


@dataclass
class TreeCanaryClients(CanaryClients):
    """The canary clients of a ``central-dp-ftrl`` run (:class:`privacy.central_ftrl.TreeFTRL`).

    Every included canary takes part once per tree epoch, in the epoch's first round: its leaf is
    then in every node ``[1, 2^j]``, ``2^j <= T``, the ``depth(T)`` released nodes the accountant
    charges (no other slot lies in more), so the audit tests the claim at its worst case. Its update
    goes through the strategy's clip factor into an audit block with a tree of its own (the model
    tree's noise std, from the same generator), and :meth:`release` receives the block's **released
    prefix sum** of each round, in the scale of the sum.

    The score (``scores``, which every test reads) is the log-likelihood ratio of the released
    prefix sums ``Y_1..Y_t`` of one coordinate under the claimed mechanism, in (the canary added
    ``C`` at step 1) against out (it added nothing), with the tree's covariance ``Cov(Y_s, Y_t) =
    (z C)^2`` times the nodes ``[1, s]`` and ``[1, t]`` share: ``mu' Sigma^-1 Y - mu' Sigma^-1 mu / 2``.
    Each prefix sum is its earlier one plus the node its step closes (``Y_t = Y_(t - 2^j) + node_t``,
    ``j`` the trailing zeros of ``t``), so the nodes are read back from the releases by differences,
    they are independent ``N(mean, (z C)^2)``, and the ratio is ``sum over the nodes holding step 1
    of (node / C - 1/2) / z^2``, summed over the epochs (independent trees). ``nodes``: how many
    such nodes the releases held, the Gaussian compositions (sensitivity 1, noise ``z``) of the
    f-DP bound's shape (``steps`` in the record, ``sample_rate`` 1)."""

    sample_rate: float = 1.0
    nodes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.noise_multiplier or self.noise_multiplier <= 0:
            raise ValueError("tree canary clients need the claimed noise multiplier (> 0)")
        self.restart()

    def restart(self) -> None:
        """A new tree epoch: no prefix sums released yet."""
        self._prefix: dict[int, np.ndarray] = {0: np.zeros(self.m, dtype=np.float64)}

    def release(self, block: np.ndarray, clip: float, *, step: int) -> None:
        """Step ``step``'s released prefix sum of the audit block (clipped sums + tree noise, in the
        scale of the sum): the node it closes, in units of the clipping norm, and if that node holds
        step 1, its log-likelihood ratio added to the scores."""
        if block.shape != (self.m,):
            raise ValueError(f"canary block has shape {block.shape}, expected ({self.m},)")
        if step != len(self._prefix):   # steps 0 .. step - 1 released
            raise ValueError(f"tree canary release at step {step}, expected step {len(self._prefix)}")
        width = step & -step
        x = np.asarray(block, dtype=np.float64) / clip
        node = x - self._prefix[step - width]
        self._prefix[step] = x
        if step == width:   # the node [1, step] (step a power of two) holds the canaries' leaf
            self.scores += (node - 0.5) / self.noise_multiplier ** 2
            self.nodes += 1
        self.releases += 1

    def record(self) -> dict:
        return {"kind": NAME, "unit": UNIT, "m": self.m, "sample_rate": 1.0, "steps": self.nodes,
                "rounds": self.releases, "scores": self.scores.tolist(), "guess_sides": self.guess_sides,
                "planted": "the first round of every tree epoch",
                "audit_statistic": "log-likelihood ratio of the released prefix sums under the claimed tree "
                                   f"covariance, z = {self.noise_multiplier:g}"}


def release_log_likelihood_ratio(x: np.ndarray, q: float, z: float) -> np.ndarray:
    """log of p_in(x) / p_out(x) for one release ``x`` (units of C) under the claimed mechanism:
    in, the canary is drawn with probability q and adds 1, plus N(0, z^2); out, N(0, z^2) alone:
    ``log(1 - q + q exp((x - 1/2) / z^2))``, computed without overflow (a clip-off plant releases
    x = 1000)."""
    return np.logaddexp(np.log1p(-q), np.log(q) + (x - 0.5) / z ** 2)


def audit_entry(record: dict, seed: int):
    """The :class:`privacy.mechanisms.base.Canaries` of a central row's ``privacy`` record, or None."""
    from privacy.whitebox import recorded_canaries

    found = recorded_canaries(record, seed, name=NAME, unit=UNIT)
    return found[0] if found else None
