"""Which clients train in a round: FedAvg over a seeded sample of a fixed number of partitions.

Clients are sampled with a generator seeded by (run seed, round) over *partition ids* (learned
once with a query message, :mod:`benchmark.federation.discovery`), not with Flower's unseeded
``random.sample`` over node ids, so a (scenario, seed) pair always trains the same clients in the
same rounds, in simulation and in deployment alike. A DP mechanism wraps or replaces this strategy
(:meth:`privacy.mechanisms.base.Mechanism.server_side`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from benchmark.seeding import derive_seed
from privacy.mechanisms.base import TIMING_KEYS


class SeededFedAvg(FedAvg):
    """FedAvg weighted by sample counts, sampling ``clients_per_round`` partitions per round
    with a generator seeded by (run seed, round)."""

    def __init__(self, *, partition_to_node: dict[int, int], clients_per_round: int, seed: int,
                 **kwargs) -> None:
        super().__init__(fraction_evaluate=0.0, min_evaluate_nodes=0,
                         min_available_nodes=len(partition_to_node), **kwargs)
        self.partition_to_node = partition_to_node
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.sampled: dict[int, list[int]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        rng = np.random.default_rng(derive_seed("client-sampling", self.seed, server_round))
        n = len(self.partition_to_node)
        chosen = sorted(int(p) for p in rng.choice(n, size=self.clients_per_round, replace=False))
        self.sampled[server_round] = chosen
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        nodes = [self.partition_to_node[p] for p in chosen]
        return self._construct_messages(record, nodes, MessageType.TRAIN)



def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted means as Flower does, except the privacy figures (the worst client counts) and the
    clients' seconds (:data:`~privacy.mechanisms.base.TIMING_KEYS`: their sum and their maximum,
    ``client_s_sum`` / ``client_s_max``, what a round's wall time is compared with)."""
    def values(key: str) -> list[float]:
        return [float(m[key]) for r in records for m in r.metric_records.values() if key in m]

    out = aggregate_metricrecords(records, weighted_by_key)
    for key, pick in (("epsilon", max), ("sample_rate", max), ("noise_multiplier", min)):
        if vals := values(key):
            out[key] = pick(vals)
    for key in TIMING_KEYS:
        out.pop(key, None)
        if vals := values(key):
            out[f"{key}_sum"], out[f"{key}_max"] = sum(vals), max(vals)
    return out


