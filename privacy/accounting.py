"""Epsilon for both privacy levels, and the inverse (noise for a target epsilon).

Sample level (local DP-SGD, Opacus): Poisson-subsampled Gaussian mechanism, ``steps`` steps at
``sample_rate``; accountant ``rdp`` or ``prv`` from Opacus.

Client level (central DP, Flower's DP wrappers): one Gaussian release per round with sensitivity
``clipping_norm`` (add/remove one client) and noise ``noise_multiplier * clipping_norm``, composed
over every round a client could take part in, with **no amplification by sampling**: the server
samples a fixed number of clients per round, which Flower's accountant (``flwr[dp]``, backed by
Google's dp-accounting) only supports as ``NO_AMPLIFICATION``. We use that accountant.

Every function refuses bad values with a one-line :class:`AccountingError`.
"""

from __future__ import annotations

import math

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


def sample_level_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                         accountant: str = "rdp") -> float:
    """Epsilon of DP-SGD after ``steps`` Poisson-sampled steps (Opacus accountant)."""
    from opacus.accountants import create_accountant

    check_privacy_params(delta=delta, sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps)
    _check_accountant(accountant)
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


def image_level_epsilon(dp_mode: str, *, epsilon: float, noise_multiplier: float, rounds: int, delta: float,
                        num_clients: int, clients_per_round: int = 1, sample_rate: float | None = None) -> float:
    """The epsilon that holds for one *image* (what a membership audit tests) of a run that claims
    ``epsilon`` for its DP mode's unit.

    Where the unit is an image (``image_sensitivity`` 1: local DP-SGD) it is the claim. Where one
    image moves what the accountant bounds by ``image_sensitivity`` times the unit's sensitivity
    (central DP: one image can move its client's clipped update by up to 2C, the accountant charges C
    per client), it is the same accountant at ``noise_multiplier / image_sensitivity``. The mode's
    registry entry (:class:`privacy.modes.DPMode`) says which.
    """
    from privacy.modes import get_dp_mode

    mode = get_dp_mode(dp_mode)
    if not mode.private or mode.image_sensitivity is None:
        raise AccountingError(f"dp_mode {dp_mode!r} claims no epsilon")
    if mode.image_sensitivity == 1:
        return float(epsilon)
    if not mode.server_adds_noise:
        raise AccountingError(f"dp_mode {dp_mode!r}: no image-level accountant for sensitivity "
                              f"{mode.image_sensitivity:g}")
    if mode.client_sampling == "poisson":
        # Poisson-sampled clients (privacy.central_sampled): the same amplified accountant at the same
        # client rate q. With adaptive clipping ``noise_multiplier`` is the effective z of both
        # releases; an image flips its client's clipped-count bit by 1 where a client moves the
        # centred sum by 1/2, so that release's sensitivity doubles too and z/2 still holds.
        from privacy.sampled_accounting import client_sampled_epsilon

        if sample_rate is None:
            raise AccountingError(f"dp_mode {dp_mode!r}: the image-level epsilon needs the client sample rate")
        return client_sampled_epsilon(noise_multiplier=noise_multiplier / mode.image_sensitivity,
                                      sample_rate=sample_rate, rounds=rounds, delta=delta)
    return client_level_epsilon(noise_multiplier=noise_multiplier / mode.image_sensitivity, rounds=rounds,
                                delta=delta, num_clients=num_clients, clients_per_round=clients_per_round)
