"""Central DP (client-level): Flower's fixed-clipping DP wrapper around our FedAvg.

The server clips each sampled client's model update to ``clipping_norm`` (L2, over all arrays),
averages them with *equal* weights (weighted FedAvg would let one client's weight exceed
1/clients_per_round and break the sensitivity bound), and adds Gaussian noise with standard
deviation ``noise_multiplier * clipping_norm / clients_per_round`` to the average: Flower's
``DifferentialPrivacyServerSideFixedClipping`` wrapping the sampling FedAvg, with Flower's own
RDP accountant attached (``NO_AMPLIFICATION``: we claim no amplification from sampling a fixed
number of clients per round, so every round is charged in full to every client).

``central_clipping = "client"`` uses Flower's ``DifferentialPrivacyClientSideFixedClipping``
instead: the server sends the clipping norm and each client clips its own update with Flower's
``fixedclipping_mod`` before sending it (the server still adds the noise). The client app carries
:func:`central_clipping_mod`, which applies that mod only when the server asked for it, so the
same ClientApp serves every scenario.

Flower 1.42 traps (the server's reply screening, :mod:`benchmark.federation.screening`, runs
before this wrapper because of the first two): clipping subtracts arrays without checking shapes
(a wrong-shaped update crashes the run) and turns a NaN update into NaN; unequal client weights
raise ``ValueError`` (the whole run, not the round); with the accountant attached it skips a round
with any failed or missing client; ``compute_clip_model_update`` divides by zero on an all-zero
update; the noise comes from numpy's *global* RNG (``np.random.normal`` in
``add_gaussian_noise_inplace``), which any code in the server process can seed or read.

Our wrappers (:class:`SecretNoiseServerSideFixedClipping`, :class:`SecretNoiseClientSideFixedClipping`)
are Flower's two classes with one method overridden, the one that adds the noise: they draw it
from a numpy generator seeded from OS entropy (:func:`privacy.noise.secret_numpy_rng`), made per
strategy and never written anywhere; everything else (clipping, averaging, accounting) is Flower's.
Central-DP rows are therefore reproducible up to the DP noise. Tests may hand ``wrap_central_dp``
a seeded ``noise_rng``; the federation never does.

White-box audit (``canaries``, :mod:`privacy.canary_clients`): after each release the wrappers
release an audit block too: every included canary client's Dirac update clipped by Flower's own
``clip_inputs_inplace`` at the wrapper's clipping norm, averaged over ``num_sampled_clients`` as
Flower's FedAvg averages, noised by the same noise method (generator and standard deviation),
after every round Flower's accountant charged. Under ``central_clipping = "client"`` the canaries
are still clipped by that function on the server: a client that skipped Flower's clipping mod is
not what they test (the server's reply screening refuses an update above C, :mod:`benchmark.federation.screening`).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, clip_inputs_inplace, compute_stdv
from flwr.serverapp.strategy import (DifferentialPrivacyClientSideFixedClipping,
                                     DifferentialPrivacyServerSideFixedClipping, FedAvg)

from privacy.accounting import client_accountant
from privacy.mechanisms.base import UNIFORM_WEIGHT_KEY
from privacy.noise import secret_numpy_rng, secure_normal


NOISE_METHOD = "_add_noise_to_aggregated_arrays"  # the one method of Flower's wrappers we override
if not all(callable(getattr(c, NOISE_METHOD, None)) for c in (DifferentialPrivacyServerSideFixedClipping,
                                                            DifferentialPrivacyClientSideFixedClipping)):
    raise ImportError(f"Flower's fixed-clipping DP wrappers no longer have {NOISE_METHOD}: the secret-noise "
                      "override in privacy/central.py would be skipped; update it for this Flower version")


class _SecretNoise:
    """Flower's noise step (``stdv = noise_multiplier * clipping_norm / num_sampled_clients`` on
    every aggregated array), drawn from ``self.noise_rng`` instead of numpy's global RNG."""

    def __init__(self, *args, noise_rng: np.random.Generator | None = None, canaries=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.noise_rng = noise_rng or secret_numpy_rng()
        self.canaries = canaries   # privacy.canary_clients.CanaryClients, or None

    def aggregate_train(self, server_round: int, replies):
        """Flower's aggregation (clip, average, noise, account); then, where its accountant charged
        a release, the canary clients' audit block through the same clip function and noise method."""
        before = self._releases() if self.canaries is not None else 0
        arrays, metrics = super().aggregate_train(server_round, replies)
        if self.canaries is not None and (self._releases() > before if before is not None else bool(arrays)):
            self._release_canaries()
        return arrays, metrics

    def _releases(self) -> int | None:
        spent = self.privacy_spent()  # None without Flower's accountant (never in a run)
        return None if spent is None else spent.num_releases

    def _release_canaries(self) -> None:
        c = self.canaries
        # Flower's own clip, on a canary's one non-zero coordinate (every canary's update is the same).
        update = [np.array([c.update_norm(self.clipping_norm)], dtype=np.float64)]
        clip_inputs_inplace(update, self.clipping_norm)
        block = np.zeros(c.m, dtype=np.float64)
        block[c.ids] = update[0][0]  # every included canary, every round (the accountant's worst case)
        averaged = ArrayRecord({"canary-block": Array(block / self.num_sampled_clients)})
        noised = self._add_noise_to_aggregated_arrays(averaged)["canary-block"].numpy()
        c.release(noised * self.num_sampled_clients, self.clipping_norm)

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        stdv = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        noised = {key: Array(np.asarray(arr + secure_normal(self.noise_rng, stdv, arr.shape).astype(arr.dtype)))
                  for key, arr in zip(aggregated_arrays.keys(), aggregated_arrays.to_numpy_ndarrays(), strict=True)}
        return ArrayRecord(noised)


class SecretNoiseServerSideFixedClipping(_SecretNoise, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP wrapper, its noise from a secret generator."""


class SecretNoiseClientSideFixedClipping(_SecretNoise, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping DP wrapper, its noise from a secret generator."""


def wrap_central_dp(strategy: FedAvg, *, noise_multiplier: float, clipping_norm: float,
                    clients_per_round: int, num_clients: int, delta: float, side: str = "server",
                    noise_rng: np.random.Generator | None = None, canaries=None):
    """Flower's fixed-clipping DP wrapper (server- or client-side clipping), with Flower's
    accountant attached and its noise from ``noise_rng`` (default: a secret generator; tests only
    pass a seeded one); ``canaries``: canary clients (:mod:`privacy.canary_clients`)."""
    if strategy.weighted_by_key != UNIFORM_WEIGHT_KEY:
        raise ValueError(f"central DP needs uniform client weights (weighted_by_key={UNIFORM_WEIGHT_KEY!r})")
    wrappers = {"server": SecretNoiseServerSideFixedClipping, "client": SecretNoiseClientSideFixedClipping}
    if side not in wrappers:
        raise ValueError(f"central_clipping must be 'server' or 'client', got {side!r}")
    return wrappers[side](
        strategy, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm,
        num_sampled_clients=clients_per_round,
        accountant=client_accountant(num_clients=num_clients, delta=delta), noise_rng=noise_rng,
        canaries=canaries,
    )


def central_clipping_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower's ``fixedclipping_mod`` when the server sent a clipping norm, else a no-op."""
    configs = [r for r in msg.content.config_records.values() if isinstance(r, ConfigRecord)]
    if any(KEY_CLIPPING_NORM in c for c in configs):
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)
