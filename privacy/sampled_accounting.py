"""Client-level epsilon with amplification by Poisson client sampling, and its inverse.

The ``central-dp-sampled`` mode (:mod:`privacy.central_sampled`) releases, every round, the SUM of
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

Every function refuses bad values with a one-line :class:`privacy.accounting.AccountingError`.
"""

from __future__ import annotations

import math

from privacy.accounting import AccountingError, check_privacy_params

SAMPLED_CLIENT_ACCOUNTANT = "opacus-rdp-poisson-clients"
EPSILON_TOLERANCE = 0.005  # calibration: epsilon within [target - tol, target]


def client_sampled_epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon of ``rounds`` Poisson-sampled Gaussian releases (Opacus RDP, add/remove one client)."""
    from opacus.accountants import create_accountant

    check_privacy_params(delta=delta, sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=rounds)
    acc = create_accountant("rdp")
    acc.history = [(noise_multiplier, sample_rate, rounds)]
    return float(acc.get_epsilon(delta))


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

