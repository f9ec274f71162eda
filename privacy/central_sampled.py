"""Central DP with Poisson client sampling (DP-FedAvg, McMahan et al. 2018), a Flower Strategy.

Each round every client takes part independently with probability ``q`` (``configure_train``
draws the set over partition ids and sends to their nodes through the grid). ``aggregate_train``
clips each reply's update (reply minus the global model, L2 over all arrays) to ``C``, SUMS the
clipped updates, adds ``N(0, (z C)^2)`` per coordinate once, and divides by the expected count
``q N``, a public constant (the fixed-denominator estimator). So the sensitivity to adding or
removing one client is ``C / (q N)`` whatever happens in the round: a client that drops out, is
late or is rejected is simply not in the sum, the round still releases, and the epsilon is the
same (:mod:`privacy.accounting` charges every round, an empty one included, as the
sampled Gaussian mechanism of rate ``q``).

What holds against whom. Amplification by sampling needs the sample to be secret from the
adversary: the participants of a round must not be predictable from anything it sees. So the
sample is drawn from a generator seeded by the OS's CSPRNG (``secrets``), never from the run seed,
and the noise likewise (the generators are numpy's PCG64; the secret is the 128-bit seed). The
guarantee (client-level, add/remove one client) covers the sequence of released global models and
everything computed from them (samples, FID, attacks on the model). It does not hold against the
server, which sees every raw update (central DP trusts it), nor against a reader of the server's
own log (``history.json`` names each round's sampled partitions and dropped clients): that log is
the operator's, not part of the release. Runs in this mode are not bit-reproducible (by design).

Adaptive clipping (Andrew et al. 2021, geometric update): the server also sums the centred bits
``b_i - 1/2`` (``b_i = 1`` when the update's norm is within ``C``), adds ``N(0, sigma_b^2)``, and
estimates the unclipped fraction ``b = sum / (q N) + 1/2``; then ``C <- C exp(-eta (b - gamma))``.
The update's noise multiplier becomes ``(z^-2 - (2 sigma_b)^-2)^-1/2`` so both releases compose to
``z``, which is what the accountant charges.

White-box audit (``canaries``, :mod:`privacy.canary_clients`): canary clients drawn by the same
sampler at the same rate, clipped by the same factor (:meth:`PoissonSampledDP.clip_factor`) and
noised from the same generator at the same standard deviation as the model's sum, in an audit block
beside it. ``plant`` (:mod:`privacy.plants`, auditing the audit only): the noise std, the clip or
the sampling rate differ from what the accountant is charged, for the model and the canaries alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

from privacy.accounting import SAMPLED_CLIENT_ACCOUNTANT, adaptive_update_noise, client_sampled_epsilon
from privacy.mechanisms.base import UNIFORM_WEIGHT_KEY
from privacy.noise import secret_numpy_rng, secure_normal


def train_messages(server_round: int, arrays: ArrayRecord, config: ConfigRecord, chosen: list[int],
                   partition_to_node: dict[int, int]) -> list[Message]:
    """The round's train messages: the global model and the config (with ``server-round``) to each
    chosen partition's node."""
    config["server-round"] = server_round
    record = RecordDict({"arrays": arrays, "config": config})
    return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=partition_to_node[p])
            for p in chosen]


def clipped_sum(replies: list[Message], base: dict[str, np.ndarray], floats: list[str],
                clip_factor) -> tuple[dict[str, np.ndarray], list[float]]:
    """The server-side clip of a central mechanism: each reply's update (its arrays minus ``base``
    over the float arrays ``floats``, in float64), its L2 norm over all of them, and the sum of the
    updates each scaled by ``clip_factor(norm)``. Returns (the sum per array, the norms in reply order)."""
    total = {k: np.zeros(base[k].shape, dtype=np.float64) for k in floats}
    norms = []
    for reply in replies:
        arrays = next(iter(reply.content.array_records.values()))
        update = {k: arrays[k].numpy().astype(np.float64) - base[k] for k in floats}
        norm = math.sqrt(sum(float(np.sum(u * u)) for u in update.values()))
        scale = clip_factor(norm)
        for k in floats:
            total[k] += update[k] * scale
        norms.append(norm)
    return total, norms


@dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al. 2021: target quantile ``gamma`` of the update norms, learning rate ``eta`` of
    the geometric update, noise ``sigma_b`` of the clipped-count release."""

    count_noise: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.target_quantile < 1:
            raise ValueError(f"target quantile must be in (0, 1), got {self.target_quantile}")
        if not (self.learning_rate > 0 and self.count_noise > 0):
            raise ValueError("adaptive clipping needs a positive learning rate and count noise")

    def next_clip(self, clip: float, centred_bit_sum: float, expected_clients: float,
                  rng: np.random.Generator) -> tuple[float, float]:
        """(the next clipping norm, the noised unclipped-fraction estimate) from this round's bits."""
        fraction = (centred_bit_sum + float(secure_normal(rng, self.count_noise, ()))) / expected_clients + 0.5
        return clip * math.exp(-self.learning_rate * (fraction - self.target_quantile)), fraction


@dataclass(frozen=True)
class SampledPrivacySpent:
    epsilon: float
    delta: float
    num_releases: int
    accounting_method: str = SAMPLED_CLIENT_ACCOUNTANT


@dataclass
class RoundRelease:
    """What the server did in one round (its own log)."""

    sampled: list[int]
    aggregated: int = 0
    clip: float = 0.0
    noise_std: float = 0.0          # of the released aggregate, per coordinate: z_update C / (q N)
    unclipped_fraction: float | None = None
    norms: list[float] = field(default_factory=list)


class PoissonSampledDP(Strategy):
    """DP-FedAvg with Poisson client sampling, fixed-denominator sum and Gaussian noise.

    ``partition_to_node``: partition id -> node id (``discover_partitions``); ``N`` is its size.
    ``noise_multiplier``: ``z``, the accounted multiplier of one round (calibrated for the target
    epsilon with :func:`privacy.accounting.client_sampled_noise`); with ``adaptive`` the
    update itself gets the larger ``adaptive_update_noise(z, sigma_b)``. ``sampling_rng`` and
    ``noise_rng`` default to secret generators; tests pass seeded ones.
    """

    def __init__(self, *, partition_to_node: dict[int, int], sample_rate: float, noise_multiplier: float,
                 clipping_norm: float, delta: float, adaptive: AdaptiveClipping | None = None,
                 sampling_rng: np.random.Generator | None = None, noise_rng: np.random.Generator | None = None,
                 weighted_by_key: str = UNIFORM_WEIGHT_KEY, canaries=None, plant=None) -> None:
        super().__init__()
        if not partition_to_node:
            raise ValueError("no clients to sample")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"client sample rate must be in (0, 1], got {sample_rate}")
        if noise_multiplier < 0 or clipping_norm <= 0:
            raise ValueError("noise multiplier must be >= 0 and clipping norm > 0")
        self.partition_to_node = dict(sorted(partition_to_node.items()))
        self.sample_rate = sample_rate
        self.noise_multiplier = noise_multiplier
        self.update_noise = (adaptive_update_noise(noise_multiplier, adaptive.count_noise)
                             if adaptive is not None and noise_multiplier > 0 else noise_multiplier)
        self.clip = clipping_norm
        self.initial_clip = clipping_norm
        self.delta = delta
        self.adaptive = adaptive
        self.sampling_rng = sampling_rng if sampling_rng is not None else secret_numpy_rng()
        self.noise_rng = noise_rng if noise_rng is not None else secret_numpy_rng()
        self.weighted_by_key = weighted_by_key
        self.expected_clients = sample_rate * len(self.partition_to_node)  # q N, the public denominator
        self.releases: dict[int, RoundRelease] = {}
        self.sampled: dict[int, list[int]] = {}  # round -> partitions (the server's log)
        self._current: dict[int, ArrayRecord] = {}
        self.canaries = canaries                 # privacy.canary_clients.CanaryClients, or None
        self._canaries_drawn: dict[int, np.ndarray] = {}
        # A planted defect (privacy.plants): what the strategy does; the accountant is still charged
        # sample_rate and noise_multiplier.
        self.plant = plant
        self.drawn_rate = min(1.0, sample_rate * (plant.rate_factor if plant else 1.0))
        self.noise_factor = plant.noise_factor if plant else 1.0

    def clip_factor(self, norm: float) -> float:
        """The factor an update of L2 norm ``norm`` is scaled by: ``min(1, C / norm)`` (1 for a zero
        update, and under a planted ``clip-off``)."""
        if norm <= 0 or (self.plant is not None and self.plant.unclipped):
            return 1.0
        return min(1.0, self.clip / norm)

    def summary(self) -> None:
        log(INFO, "\t├──> Poisson-sampled central DP: q = %g of %d clients, z = %g (update z = %g), C = %g%s",
            self.sample_rate, len(self.partition_to_node), self.noise_multiplier, self.update_noise, self.clip,
            ", adaptive clipping" if self.adaptive else "")

    # -- train -------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        parts = list(self.partition_to_node)
        mask = self.sampling_rng.random(len(parts)) < self.drawn_rate
        chosen = [p for p, m in zip(parts, mask) if m]
        self.sampled[server_round] = chosen
        if self.canaries is not None:  # drawn after the real clients, by the same sampler at the same rate
            self._canaries_drawn[server_round] = self.canaries.draw(self.sampling_rng, self.drawn_rate)
        self._current[server_round] = arrays
        return train_messages(server_round, arrays, config, chosen, self.partition_to_node)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, sum, noise once, divide by ``q N``: always a release, whoever replied."""
        current = self._current.pop(server_round)
        names = list(current.keys())
        base = {k: current[k].numpy() for k in names}
        floats = [k for k in names if base[k].dtype.kind == "f"]  # integer buffers are kept as they are
        replies = list(replies)
        rel = RoundRelease(sampled=self.sampled.get(server_round, []), aggregated=len(replies), clip=self.clip)
        total, rel.norms = clipped_sum(replies, base, floats, self.clip_factor)
        centred_bits = 0.0
        for norm in rel.norms:
            centred_bits += (1.0 if norm <= self.clip else 0.0) - 0.5
        std = self.update_noise * self.clip * self.noise_factor
        out = {}
        for k in names:
            if k in total:
                noised = total[k] + (secure_normal(self.noise_rng, std, total[k].shape) if std > 0 else 0.0)
                out[k] = Array(np.asarray(base[k] + noised / self.expected_clients, dtype=base[k].dtype))
            else:
                out[k] = Array(base[k])
        if self.canaries is not None:
            self._release_canaries(server_round, std)
        rel.noise_std = std / self.expected_clients
        if self.adaptive is not None:
            self.clip, rel.unclipped_fraction = self.adaptive.next_clip(self.clip, centred_bits,
                                                                        self.expected_clients, self.noise_rng)
        self.releases[server_round] = rel
        metrics = aggregate_metricrecords([r.content for r in replies], self.weighted_by_key) if replies \
            else MetricRecord()
        metrics["clip_norm"] = rel.clip
        metrics["noise_std"] = rel.noise_std
        if rel.unclipped_fraction is not None:
            metrics["unclipped_fraction"] = rel.unclipped_fraction
        return ArrayRecord(out), metrics

    def _release_canaries(self, server_round: int, std: float) -> None:
        """The audit block of this round: the drawn canaries' clipped updates (each a Dirac of norm
        far above C, through :meth:`clip_factor`), summed, plus noise at the model's ``std`` from
        the model's generator (:mod:`privacy.canary_clients`)."""
        c = self.canaries
        drawn = self._canaries_drawn.pop(server_round, np.zeros(0, np.int64))
        block = np.zeros(c.m, dtype=np.float64)
        norm = c.update_norm(self.clip)
        block[drawn] = norm * self.clip_factor(norm)
        if std > 0:
            block += secure_normal(self.noise_rng, std, block.shape)
        c.release(block, self.clip)

    # -- evaluate: none (the runner evaluates the released model) -----------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    # -- accounting ----------------------------------------------------------------------------
    def privacy_spent(self) -> SampledPrivacySpent:
        """Epsilon after every release so far (each round one sampled Gaussian of multiplier z)."""
        n = len(self.releases)
        eps = client_sampled_epsilon(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, rounds=n,
                                     delta=self.delta) if n else 0.0
        return SampledPrivacySpent(epsilon=eps, delta=self.delta, num_releases=n)
