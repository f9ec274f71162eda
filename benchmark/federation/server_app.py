"""The Flower ServerApp: FedAvg over the parties' DDPM updates.

Run config (``[tool.flwr.app.config]`` in pyproject.toml, or ``flwr run --run-config``):
``scenario`` (a registered name or a scenario as JSON), ``scale``, ``seed``, ``out-dir`` (where
the final global model and the round history are written), ``device`` and optionally
``data-root``. The simulation path (:mod:`benchmark.federation.simulation`) fills the same keys.

Clients are sampled with a seeded generator over *partition ids* (learned once with a query
message), not with Flower's unseeded ``random.sample`` over node ids, so a (scenario, seed) pair
always trains the same clients in the same rounds, in simulation and in deployment alike.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from benchmark.federation import task
from benchmark.scenarios import Scenario, get_scenario

app = ServerApp()

NODE_WAIT_S = 120.0


class FederationError(RuntimeError):
    """The federation could not run as configured (one-line message)."""


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
        rng = np.random.default_rng(task.derive_seed("client-sampling", self.seed, server_round))
        n = len(self.partition_to_node)
        chosen = sorted(int(p) for p in rng.choice(n, size=self.clients_per_round, replace=False))
        self.sampled[server_round] = chosen
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        nodes = [self.partition_to_node[p] for p in chosen]
        return self._construct_messages(record, nodes, MessageType.TRAIN)


def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted means as Flower does, except the privacy figures: the worst client counts."""
    out = aggregate_metricrecords(records, weighted_by_key)
    for key, pick in (("epsilon", max), ("sample_rate", max), ("noise_multiplier", min)):
        vals = [float(m[key]) for r in records for m in r.metric_records.values() if key in m]
        if vals:
            out[key] = pick(vals)
    return out


def discover_partitions(grid: Grid, num_clients: int, timeout_s: float = NODE_WAIT_S) -> dict[int, int]:
    """Wait for ``num_clients`` nodes, ask each for its partition id; return partition -> node."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of {num_clients} nodes connected in {timeout_s:.0f} s")
        time.sleep(0.2)
    msgs = [Message(RecordDict(), dst_node_id=nid, message_type=MessageType.QUERY) for nid in nodes]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout_s):
        if reply.has_error():
            raise FederationError(f"node {reply.metadata.src_node_id} failed the partition query: "
                                  f"{reply.error.reason}")
        pid = int(reply.content["node"]["partition-id"])
        if pid in mapping:
            raise FederationError(f"two nodes claim partition {pid}")
        mapping[pid] = reply.metadata.src_node_id
    if sorted(mapping) != list(range(num_clients)):
        raise FederationError(f"nodes hold partitions {sorted(mapping)}, expected 0..{num_clients - 1}")
    return mapping


def resolve_scenario(value: str, scale: str) -> Scenario:
    value = value.strip()
    return Scenario.from_json(value) if value.startswith("{") else get_scenario(value, scale)


def run_federation(grid: Grid, run_config: dict,
                   on_round: Callable[[int], None] | None = None) -> dict:
    """Train one scenario federatedly; write ``global_model.pt`` and ``history.json`` to out-dir."""
    scenario = resolve_scenario(str(run_config["scenario"]), str(run_config.get("scale", "cpu")))
    seed = int(run_config["seed"])
    out_dir = Path(str(run_config["out-dir"]))
    device = str(run_config.get("device", "cpu"))
    data_root = str(run_config.get("data-root", "") or "")

    fed = task.load_federated_data(scenario, seed, data_root or None)
    model = task.build_model(scenario, fed.dataset, seed=task.derive_seed("init", seed))
    partition_to_node = discover_partitions(grid, scenario.num_clients)
    central = scenario.dp_mode == "central-dp"
    if central:
        from privacy.central import (DEFAULT_UPDATE_CLIP, UNIFORM_WEIGHT_KEY, calibrate_central,
                                     wrap_central_dp)
    fedavg = strategy = SeededFedAvg(
        partition_to_node=partition_to_node, clients_per_round=scenario.clients_per_round, seed=seed,
        min_train_nodes=scenario.clients_per_round, train_metrics_aggr_fn=aggregate_train_metrics,
        weighted_by_key=UNIFORM_WEIGHT_KEY if central else "num-examples")
    privacy_info: dict = {}
    if central:
        clip = scenario.max_grad_norm or DEFAULT_UPDATE_CLIP
        sigma = calibrate_central(target_epsilon=scenario.target_epsilon, delta=scenario.delta,
                                  rounds=scenario.rounds, num_clients=scenario.num_clients)
        strategy = wrap_central_dp(fedavg, noise_multiplier=sigma, clipping_norm=clip,
                                   clients_per_round=scenario.clients_per_round,
                                   num_clients=scenario.num_clients, delta=scenario.delta,
                                   side=scenario.central_clipping)
        privacy_info = {"noise_multiplier": sigma, "max_grad_norm": clip, "sample_rate": 1.0,
                        "accountant": "flwr-rdp-no-amplification", "clipping": scenario.central_clipping}
    train_config = ConfigRecord({
        "scenario": scenario.to_json(), "seed": seed, "device": device, "data-root": data_root,
    })

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if on_round is not None and server_round > 0:
            on_round(server_round)
        return None

    t0 = time.perf_counter()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=scenario.rounds, train_config=train_config,
                            evaluate_fn=evaluate_fn)
    train_s = time.perf_counter() - t0
    missing = [r for r in range(1, scenario.rounds + 1) if r not in result.train_metrics_clientapp]
    if missing:
        raise FederationError(f"rounds {missing} produced no aggregate (all clients failed)")

    if central:
        spent = strategy.privacy_spent()
        privacy_info |= {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(result.arrays.to_torch_state_dict(), out_dir / "global_model.pt")
    history = {
        "train_s": train_s,
        "central_dp": privacy_info,
        "rounds": [
            {"round": r, "sampled_partitions": fedavg.sampled.get(r, []),
             **{k: float(v) for k, v in result.train_metrics_clientapp[r].items()}}
            for r in sorted(result.train_metrics_clientapp)
        ],
    }
    tmp = out_dir / f".history.json.{os.getpid()}"
    tmp.write_text(json.dumps(history, indent=2))
    os.replace(tmp, out_dir / "history.json")
    return history


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, dict(context.run_config))
