"""Central DP (client-level): Flower's fixed-clipping DP wrapper around our FedAvg.

The server clips each sampled client's model update to ``clipping_norm`` (L2, over all arrays),
averages them with *equal* weights (weighted FedAvg would let one client's weight exceed
1/clients_per_round and break the sensitivity bound), and adds Gaussian noise with standard
deviation ``noise_multiplier * clipping_norm / clients_per_round`` to the average: Flower's
``DifferentialPrivacyServerSideFixedClipping`` wrapping :class:`SeededFedAvg`, with Flower's own
RDP accountant attached (``NO_AMPLIFICATION``: we claim no amplification from sampling a fixed
number of clients per round, so every round is charged in full to every client).
"""

from __future__ import annotations

from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from privacy.accounting import client_accountant, client_level_noise

DEFAULT_UPDATE_CLIP = 0.5
UNIFORM_WEIGHT_KEY = "dp-weight"  # every client reports 1.0: equal weights in the average


def calibrate_central(*, target_epsilon: float, delta: float, rounds: int, num_clients: int) -> float:
    """Noise multiplier for ``target_epsilon`` after all ``rounds`` (each charged in full)."""
    return client_level_noise(target_epsilon=target_epsilon, rounds=rounds, delta=delta, num_clients=num_clients)


def wrap_central_dp(strategy: FedAvg, *, noise_multiplier: float, clipping_norm: float,
                    clients_per_round: int, num_clients: int, delta: float):
    """Flower's server-side fixed-clipping DP wrapper, with Flower's accountant attached."""
    if strategy.weighted_by_key != UNIFORM_WEIGHT_KEY:
        raise ValueError(f"central DP needs uniform client weights (weighted_by_key={UNIFORM_WEIGHT_KEY!r})")
    return DifferentialPrivacyServerSideFixedClipping(
        strategy, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm,
        num_sampled_clients=clients_per_round,
        accountant=client_accountant(num_clients=num_clients, delta=delta),
    )
