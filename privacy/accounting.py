"""Epsilon for both privacy levels, and the inverse (noise for a target epsilon).

Sample level (local DP-SGD, Opacus): Poisson-subsampled Gaussian mechanism, ``steps`` steps at
``sample_rate``; accountant ``rdp`` or ``prv`` from Opacus.

Client level (central DP, Flower's DP wrappers): one Gaussian release per round with sensitivity
``clipping_norm`` (zero-out one client: it stays in the fixed-count draw and its update is replaced
by zero; under add/remove its slot would go to another client, 2C) and noise ``noise_multiplier * clipping_norm``, composed
over every round a client could take part in, with **no amplification by sampling**: the server
samples a fixed number of clients per round, which Flower's accountant (``flwr[dp]``, backed by
Google's dp-accounting) only supports as ``NO_AMPLIFICATION``. We use that accountant.

Sampled client level, with amplification by Poisson client sampling: the ``central-dp-sampled`` mode (:mod:`privacy.central_sampled`) releases, every round, the SUM of
the clipped updates of a Poisson sample of the clients (each in with probability ``q``, the
sample kept secret) plus ``N(0, (sigma C)^2)`` per coordinate, divided by the public constant
``q N``. Under add/remove-one-client neighbours the sum's L2 sensitivity is ``C`` (not ``2C``:
nothing is replaced), so one round is the sampled Gaussian mechanism with noise multiplier
``sigma`` and rate ``q`` (Mironov, Talwar and Zhang 2019), and ``rounds`` rounds are its
``rounds``-fold composition. Every round counts, an empty one included (its release is noise only).

Primary accountant: Opacus' RDP accountant (history ``[(sigma, q, rounds)]``). A second,
independent implementation, Google's ``dp_accounting`` RDP accountant on
``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``, is here for the cross-check in the tests.

Adaptive clipping (Andrew et al. 2021) releases a second Gaussian each round: the noised sum of
the sampled clients' centred clipped-or-not bits ``b_i - 1/2`` (sensitivity 1/2) with noise
``sigma_b``. Both releases read the same sample, and together they are one sampled Gaussian of
noise multiplier ``z`` when the update's own multiplier is
``z_update = (z^-2 - (2 sigma_b)^-2)^-1/2`` (:func:`adaptive_update_noise`): scale the count by
``z_update C / sigma_b`` and the pair is one isotropic Gaussian of std ``z_update C`` on a vector of
sensitivity ``C (1 + z_update^2 / (4 sigma_b^2))^1/2 = z_update C / z``, on the same Poisson sample,
i.e. the sampled Gaussian of multiplier ``z``. The accountant charges ``z``, so a row with adaptive
clipping carries a true epsilon (the clip norm of a round is a function of earlier releases only).

DP-FTRL (Kairouz et al. 2021), client level, without sampling or shuffling: the server adds
tree-aggregated noise (:mod:`privacy.tree_aggregation`) to the prefix sums of the clipped updates,
and each client takes part at most once per tree (between restarts). Neighbours are
replace-with-special (one client's whole contribution replaced by a "zero" one), and one tree of
``steps`` steps is the Gaussian mechanism at L2 sensitivity ``sqrt(depth)``, ``depth =
ceil(log2(steps + 1))``: :func:`ftrl_tree_epsilon`, Google's ``dp_accounting`` RDP accountant on
``SingleEpochTreeAggregationDpEvent``. Several epochs (a fresh tree each, every client once in
each) compose: :func:`ftrl_epsilon`, the ``central-dp-ftrl`` mode's accountant.

Image level (what a membership audit tests): each mechanism's ``image_epsilon`` (:mod:`privacy.mechanisms`).
Under central DP an image never leaves or joins the population: adding, removing or substituting
one image changes one *present* client's clipped update ``u`` to some ``u'`` in the same ball of
radius ``C`` (up to ``2C`` apart). Without sampling (``central-dp``) that is the Gaussian at
sensitivity ``2C``, the client-level accountant at half the noise. With Poisson client sampling
(``central-dp-sampled``) the client keeps its coin: with probability ``q`` the release carries
``u`` or ``u'``, otherwise neither, which is the replace-one relation of the sampled Gaussian,
``q N(+C) + (1 - q) N(0)`` against ``q N(-C) + (1 - q) N(0)`` (the antipodal pair, the worst
case in the ball), not add/remove at ``2C``: :func:`client_sampled_image_epsilon`, Google's
``dp_accounting`` PLD accountant (its RDP accountant has no replace-one for Poisson sampling).

Every function refuses bad values with a one-line :class:`AccountingError`.
"""

from __future__ import annotations

import functools
import math
import numbers

SAMPLE_ACCOUNTANTS = ("rdp", "prv")
CLIENT_ACCOUNTANT = "flwr-rdp-no-amplification"


class AccountingError(ValueError):
    """Invalid privacy parameters (one-line message)."""


def check_privacy_params(*, delta: float, epsilon: float | None = None, sample_rate: float | None = None,
                         population: int | None = None, noise_multiplier: float | None = None,
                         steps: int | None = None) -> None:
    if epsilon is not None and not (epsilon > 0 and math.isfinite(epsilon)):
        raise AccountingError(f"epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise AccountingError(f"delta must be in (0, 1), got {delta}")
    if population is not None and delta >= 1 / population:
        raise AccountingError(f"delta={delta:g} must be below 1/N = {1 / population:g} (N={population})")
    if sample_rate is not None and not 0 < sample_rate <= 1:
        raise AccountingError(f"sample rate must be in (0, 1], got {sample_rate}")
    if noise_multiplier is not None and not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise AccountingError(f"noise multiplier must be > 0, got {noise_multiplier}")
    if steps is not None and steps < 1:
        raise AccountingError(f"steps/rounds must be >= 1, got {steps}")


def _check_accountant(accountant: str) -> None:
    if accountant not in SAMPLE_ACCOUNTANTS:
        raise AccountingError(f"unknown accountant {accountant!r} (known: {', '.join(SAMPLE_ACCOUNTANTS)})")


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """One sampled-Gaussian step's RDP at Opacus' default orders (cached: ~1 s at fractional orders)."""
    from opacus.accountants.analysis import rdp as rdp_analysis
    from opacus.accountants.rdp import RDPAccountant

    return tuple(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                          orders=RDPAccountant.DEFAULT_ALPHAS).tolist())


def rdp_epsilon(history, delta: float) -> float:
    """Opacus' ``RDPAccountant.get_epsilon(delta)`` for ``history`` ((noise_multiplier, sample_rate,
    steps) entries), with each entry's per-step RDP computed once per process.

    The same arithmetic in the same order (Opacus' ``compute_rdp`` is the per-step RDP times the
    steps; the accountant sums the entries, then converts at its default orders), so the value is
    bit-identical (``tests/test_privacy.py`` checks it against Opacus' accountant). It exists for
    speed: Opacus recomputes every entry at each call (about 1.2 s at q = 0.5), and the server's
    ledger and every DP client ask after every round - most of a DP round of the cpu privacy suite."""
    import numpy as np
    from opacus.accountants.analysis import rdp as rdp_analysis
    from opacus.accountants.rdp import RDPAccountant

    rdp = sum(np.array(_rdp_per_step(float(s), float(q))) * n for s, q, n in history)
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def sample_level_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                         accountant: str = "rdp") -> float:
    """Epsilon of DP-SGD after ``steps`` Poisson-sampled steps (Opacus accountant; RDP through
    :func:`rdp_epsilon`, the same value computed with a per-process cache)."""
    from opacus.accountants import create_accountant

    check_privacy_params(delta=delta, sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps)
    _check_accountant(accountant)
    if accountant == "rdp":
        return rdp_epsilon([(noise_multiplier, sample_rate, steps)], delta)
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


def sample_level_noise(*, target_epsilon: float, sample_rate: float, steps: int, delta: float,
                       accountant: str = "rdp") -> float:
    """The smallest noise multiplier (to Opacus' tolerance) whose epsilon is <= target."""
    from opacus.accountants.utils import get_noise_multiplier

    check_privacy_params(delta=delta, epsilon=target_epsilon, sample_rate=sample_rate, steps=steps)
    _check_accountant(accountant)
    sigma = float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                       sample_rate=sample_rate, steps=steps, accountant=accountant,
                                       epsilon_tolerance=0.005))
    eps = sample_level_epsilon(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta,
                               accountant=accountant)
    assert eps <= target_epsilon * (1 + 1e-9), (eps, target_epsilon)  # the calibration's promise
    return sigma


def client_accountant(*, num_clients: int, delta: float):
    """Flower's RDP accountant, configured the way our central-DP strategy samples clients."""
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    return RdpAccountant(PrivacyConfig(target_delta=delta, population_size=num_clients,
                                       neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                       sampling_method=SamplingMethod.NO_AMPLIFICATION))


def client_level_epsilon(*, noise_multiplier: float, rounds: int, delta: float, num_clients: int,
                         clients_per_round: int = 1) -> float:
    """Epsilon of central DP after ``rounds`` noisy aggregates (no sampling amplification)."""
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    check_privacy_params(delta=delta, noise_multiplier=noise_multiplier, steps=rounds)
    acc = client_accountant(num_clients=num_clients, delta=delta)
    acc.compose(GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=clients_per_round,
                                     population_size=num_clients), count=rounds)
    return float(acc.get_epsilon(delta))


def client_level_noise(*, target_epsilon: float, rounds: int, delta: float, num_clients: int) -> float:
    """The smallest noise multiplier (bisection, 0.1% relative) whose client-level epsilon <= target."""
    check_privacy_params(delta=delta, epsilon=target_epsilon, steps=rounds)
    eps = lambda s: client_level_epsilon(noise_multiplier=s, rounds=rounds, delta=delta,  # noqa: E731
                                         num_clients=num_clients)
    lo, hi = 1e-2, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise AccountingError(f"no noise multiplier reaches epsilon {target_epsilon}")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
    return hi


# Client level with amplification by Poisson client sampling ------------------------------------
SAMPLED_CLIENT_ACCOUNTANT = "opacus-rdp-poisson-clients"
EPSILON_TOLERANCE = 0.005  # calibration: epsilon within [target - tol, target]


def client_sampled_epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon of ``rounds`` Poisson-sampled Gaussian releases (Opacus RDP, add/remove one client;
    through :func:`rdp_epsilon`, the same value with the per-round RDP cached: the server asks after
    every round for the progress line)."""
    check_privacy_params(delta=delta, sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=rounds)
    return rdp_epsilon([(noise_multiplier, sample_rate, rounds)], delta)


def client_sampled_epsilon_dp_accounting(*, noise_multiplier: float, sample_rate: float, rounds: int,
                                         delta: float) -> float:
    """The same epsilon from Google's dp_accounting (RDP), an independent implementation."""
    import dp_accounting

    check_privacy_params(delta=delta, sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=rounds)
    acc = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    acc.compose(dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)),
                rounds)
    return float(acc.get_epsilon(delta))


IMAGE_PLD_DISCRETIZATION = 1e-3  # the PLD's privacy-loss grid; refined below epsilon 1 (see below)


def _replace_one_sampled_pld_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float,
                                     interval: float) -> float:
    import dp_accounting

    acc = dp_accounting.pld.PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
                                          value_discretization_interval=interval)
    acc.compose(dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)),
                rounds)
    return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=1024)
def client_sampled_image_epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Image-level epsilon of ``rounds`` Poisson-sampled Gaussian releases (``central-dp-sampled``):
    Google's ``dp_accounting`` PLD accountant, replace-one, on
    ``PoissonSampledDpEvent(sample_rate, GaussianDpEvent(noise_multiplier))``, at the row's own
    noise multiplier (not halved) and client rate.

    Why replace-one: one image (added, removed or substituted) changes only its client's data. The
    client stays in the population and keeps its Poisson coin, so it is in the sample of a round
    with probability ``q`` whichever image set it holds; when it is in, its clipped update ``u`` is
    replaced by ``u'``, both in the ball of radius ``C`` (up to ``2C`` apart); when it is out,
    nothing changes. Subtracting the other clients' part (independent of this client's data), one
    round is the pair ``q N(u, (zC)^2) + (1 - q) N(0, (zC)^2)`` against the same with ``u'``. The
    pair ``dp_accounting`` analyses for ``REPLACE_ONE`` is the antipodal one, ``u = -u'`` of norm
    ``C`` along one axis: ``q N(+C) + (1 - q) N(0)`` against ``q N(-C) + (1 - q) N(0)`` (in units of
    ``C``, noise ``z``): the largest replacement the ball allows, each point as far from the common
    ``N(0)`` part as it can be, and the worst case (``tests/test_central_sampled.py`` checks that
    other pairs in the ball have smaller hockey-stick divergences at every ``e^epsilon``, so this
    pair dominates each round and hence their composition). Add/remove one client at ``2C`` (the
    client-level accountant at ``z / 2``, what this mode charged before) over-charges: it sets the
    ``2C`` move against an absent client, where here the unsampled case is the same on both sides.

    Adaptive clipping: an image also flips its client's centred clipped-or-not bit from ``-1/2`` to
    ``+1/2``. Scaled as in :func:`adaptive_update_noise`, the update and the count are one vector
    in a ball of radius ``z_update C / z`` under isotropic noise ``z_update C``, read on the same
    sample; an image replaces the client's vector within that ball, the same replace-one structure
    at the effective multiplier ``z``. So the same formula holds at the row's (effective) ``z``.

    The PLD is pessimistic (its privacy-loss grid rounds up): the grid is
    :data:`IMAGE_PLD_DISCRETIZATION` (within 1e-4 relative of a 10 times finer grid on the
    cross-device rows, ~0.2 s), refined in proportion below epsilon 1, where it would dominate."""
    check_privacy_params(delta=delta, sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=rounds)
    eps = _replace_one_sampled_pld_epsilon(noise_multiplier, sample_rate, rounds, delta, IMAGE_PLD_DISCRETIZATION)
    if eps < 1:
        eps = _replace_one_sampled_pld_epsilon(noise_multiplier, sample_rate, rounds, delta,
                                               IMAGE_PLD_DISCRETIZATION * max(eps, 1e-3))
    return eps


def client_sampled_noise(*, target_epsilon: float, sample_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to Opacus' tolerance) whose sampled client-level epsilon <= target."""
    from opacus.accountants.utils import get_noise_multiplier

    check_privacy_params(delta=delta, epsilon=target_epsilon, sample_rate=sample_rate, steps=rounds)
    try:
        sigma = float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                           steps=rounds, accountant="rdp", epsilon_tolerance=EPSILON_TOLERANCE))
    except ValueError as e:
        raise AccountingError(f"no noise multiplier reaches epsilon {target_epsilon}: {e}".splitlines()[0]) from None
    eps = client_sampled_epsilon(noise_multiplier=sigma, sample_rate=sample_rate, rounds=rounds, delta=delta)
    assert eps <= target_epsilon * (1 + 1e-9), (eps, target_epsilon)  # the calibration's promise
    return sigma


# DP-FTRL: tree-aggregated noise, no sampling (Kairouz et al. 2021) ------------------------------------
FTRL_ACCOUNTANT = "dp-accounting-rdp-tree-replace-special"


def _check_tree_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise AccountingError(f"steps must be an integer >= 1, got {steps!r}")


def ftrl_epoch_steps(rounds: int, rounds_per_epoch: int) -> tuple[int, ...]:
    """The steps of each tree epoch of a run of ``rounds`` rounds restarted every
    ``rounds_per_epoch`` rounds: full epochs, then a shorter last one if ``rounds`` is not a multiple."""
    _check_tree_steps(rounds)
    _check_tree_steps(rounds_per_epoch)
    full, rest = divmod(int(rounds), int(rounds_per_epoch))
    return (int(rounds_per_epoch),) * full + ((rest,) if rest else ())


def _ftrl_event(noise_multiplier: float, epoch_steps: tuple[int, ...]):
    """The epochs as dp_accounting composes them: one ``SingleEpochTreeAggregationDpEvent`` per
    epoch (a fresh tree each), self-composed over the epochs of equal length."""
    import dp_accounting

    counts: dict[int, int] = {}
    for steps in epoch_steps:
        counts[steps] = counts.get(steps, 0) + 1
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.SingleEpochTreeAggregationDpEvent(float(noise_multiplier),
                                                                                          step_counts=steps), count)
        for steps, count in sorted(counts.items())])


@functools.lru_cache(maxsize=4096)
def _ftrl_epsilon(noise_multiplier: float, epoch_steps: tuple[int, ...], delta: float) -> float:
    import dp_accounting

    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL)
    acc.compose(_ftrl_event(noise_multiplier, epoch_steps))
    return float(acc.get_epsilon(delta))


def ftrl_epsilon(*, noise_multiplier: float, epoch_steps, delta: float) -> float:
    """Client-level epsilon of DP-FTRL over several tree epochs (``epoch_steps``: the steps of each).

    Each epoch is one tree (:func:`ftrl_tree_epsilon`), restarted with fresh nodes, in which every
    client takes part at most once; a client takes part in every epoch, so the epochs compose:
    dp_accounting's RDP accountant (``REPLACE_SPECIAL``) on one
    ``SingleEpochTreeAggregationDpEvent`` **per epoch**, i.e. RDP ``a sum_e depth(T_e) / (2 sigma^2)``
    at order ``a``. (One ``SingleEpochTreeAggregationDpEvent`` with a list of step counts is a
    different mechanism: several trees in ONE epoch, each record in at most one of them; it charges
    only the deepest tree and would under-count a client that takes part in every epoch.)"""
    check_privacy_params(delta=delta, noise_multiplier=noise_multiplier)
    if isinstance(epoch_steps, (numbers.Number, str)) or not hasattr(epoch_steps, "__iter__"):
        epoch_steps = (epoch_steps,)
    epoch_steps = tuple(epoch_steps)
    if not epoch_steps:
        raise AccountingError("epoch_steps must name at least one epoch")
    for steps in epoch_steps:
        _check_tree_steps(steps)
    return _ftrl_epsilon(float(noise_multiplier), tuple(int(s) for s in epoch_steps), float(delta))


def ftrl_tree_epsilon(*, noise_multiplier: float, steps: int, delta: float, epochs: int = 1) -> float:
    """Client-level epsilon of DP-FTRL's tree aggregation over ``epochs`` trees of ``steps`` steps each.

    The mechanism (Kairouz et al. 2021, "Practical and Private (Deep) Learning without Sampling or
    Shuffling"; :class:`privacy.tree_aggregation.TreeAggregator`): at step ``t`` the server
    releases the prefix sum of the clipped client updates of steps ``1..t`` plus the noise of the
    ``popcount(t)`` binary-tree nodes covering ``[1, t]``; every node's noise, std
    ``noise_multiplier * clip`` per coordinate, is drawn once and reused. A tree restart (a new
    epoch) starts from fresh nodes.

    Neighbouring relation: **replace-with-special** (``dp_accounting``'s ``REPLACE_SPECIAL``, which
    cites the paper's Definition 1.1): one client's whole contribution is replaced by a special "zero"
    contribution, so a leaf's value moves by at most ``clip`` (not add/remove, not replace-one at
    ``2 clip``). The guarantee assumes each client contributes **at most once per epoch** (between
    two tree restarts; :class:`privacy.tree_aggregation.ParticipationGuard` enforces it), with **no
    sampling or shuffling**: no amplification is claimed, and the order in which clients take part
    need not be random or secret. One leaf lies in at most ``depth = ceil(log2(steps + 1))`` of the
    nodes released over ``steps`` steps, so the released nodes are a Gaussian mechanism of L2
    sensitivity ``sqrt(depth) * clip`` (the prefix sums are post-processing), RDP
    ``a * depth / (2 noise_multiplier^2)`` at order ``a``, converted to ``(epsilon, delta)`` by
    ``dp_accounting``'s improved conversion at its default orders.

    ``epochs`` trees (a client once in each) compose: :func:`ftrl_epsilon`."""
    _check_tree_steps(steps)
    _check_epochs(epochs)
    return ftrl_epsilon(noise_multiplier=noise_multiplier, epoch_steps=(int(steps),) * int(epochs), delta=delta)


def _check_epochs(epochs) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise AccountingError(f"epochs must be an integer >= 1, got {epochs!r}")


def ftrl_noise(*, target_epsilon: float, epoch_steps, delta: float) -> float:
    """The smallest noise multiplier (bisection, 0.1% relative) whose :func:`ftrl_epsilon` <= target."""
    check_privacy_params(delta=delta, epsilon=target_epsilon)
    ftrl_epsilon(noise_multiplier=1.0, epoch_steps=epoch_steps, delta=delta)  # the schedule's own checks
    eps = lambda s: ftrl_epsilon(noise_multiplier=s, epoch_steps=epoch_steps, delta=delta)  # noqa: E731
    lo, hi = 1e-3, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise AccountingError(f"no noise multiplier reaches epsilon {target_epsilon}")
    if eps(lo) <= target_epsilon:
        raise AccountingError(f"epsilon {target_epsilon} is reached with noise multiplier below {lo:g}: "
                              "target too large")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
    return hi


def ftrl_tree_noise(*, target_epsilon: float, steps: int, delta: float, epochs: int = 1) -> float:
    """The smallest noise multiplier (bisection, 0.1% relative) whose :func:`ftrl_tree_epsilon` <= target."""
    check_privacy_params(delta=delta, epsilon=target_epsilon)
    _check_tree_steps(steps)
    _check_epochs(epochs)
    return ftrl_noise(target_epsilon=target_epsilon, epoch_steps=(int(steps),) * int(epochs), delta=delta)


# Adaptive clipping (Andrew et al. 2021) ------------------------------------------------------------------
def default_count_noise(*, expected_clients: float, noise_multiplier: float) -> float:
    """sigma_b: Andrew et al.'s ``expected clients / 20``, raised to ``noise_multiplier`` where that is
    too small to leave noise for the update (the update then gets ``2 / sqrt(3)`` times ``z``)."""
    return max(expected_clients / 20.0, noise_multiplier)


def adaptive_update_noise(noise_multiplier: float, count_noise: float) -> float:
    """The update release's noise multiplier ``(z^-2 - (2 sigma_b)^-2)^-1/2`` so that it and the
    clipped-count release (noise ``sigma_b``, sensitivity 1/2) compose to noise multiplier ``z``."""
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise AccountingError(f"noise multiplier must be > 0, got {noise_multiplier}")
    if not 2 * count_noise > noise_multiplier:
        raise AccountingError(f"adaptive clipping needs count noise sigma_b > z/2 = {noise_multiplier / 2:g}, "
                              f"got {count_noise:g}")
    return (noise_multiplier ** -2 - (2 * count_noise) ** -2) ** -0.5

