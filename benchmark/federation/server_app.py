"""The Flower ServerApp: FedAvg over the parties' DDPM updates, with the scenario's DP mechanism.

Run config (``[tool.flwr.app.config]`` in pyproject.toml, or ``flwr run --run-config``):
``scenario`` (a registered name or a scenario as JSON), ``scale``, ``seed``, ``out-dir`` (where
the final global model and the round history are written), ``device``, ``init-weights`` (the public
checkpoint of a pretrained scenario), and ``partition-manifest`` (the ``manifest.json`` that
``bench partitions`` wrote beside the parties' files) or ``partition-dir`` (the folder holding it;
the simulation path, :mod:`benchmark.federation.simulation`, exports the files and sets it). The
server holds no images: from the manifest it takes the image shape, the classes and each
partition's image count.

The wiring, outermost first: :class:`~benchmark.federation.screening.ScreenedAggregation` (drops
failed, late and invalid replies) around the mechanism's server side
(:meth:`privacy.mechanisms.base.Mechanism.server_side`: a DP wrapper, a ledger, or nothing) around
:class:`~benchmark.federation.sampling.SeededFedAvg`; partitions are mapped to nodes first
(:mod:`benchmark.federation.discovery`), and ``history.json`` is :mod:`benchmark.federation.record`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from benchmark.federation import task
from benchmark.federation.discovery import FLOWER_DEFAULT_TIMEOUT_S, MIN_DISCOVERY_WAIT_S, discover_partitions
from benchmark.federation.errors import FederationError
from benchmark.federation.partition_files import PartitionManifest, read_manifest
from benchmark.federation.record import history_record
from benchmark.federation.sampling import SeededFedAvg, aggregate_train_metrics
from benchmark.federation.screening import ScreenedAggregation
from benchmark.rundir import write_json, write_torch
from benchmark.scenarios import Scenario
from benchmark.seeding import derive_seed
from benchmark.suites import get_scenario
from privacy.mechanisms import get_mechanism

app = ServerApp()


def seed_argument(server_side, seed: int) -> dict:
    """``{"seed": seed}`` where a mechanism's ``server_side`` takes the run seed (the white-box
    canaries' coins), else nothing: a plugin written before the seed was passed keeps working."""
    import inspect

    params = inspect.signature(server_side).parameters.values()
    takes = any(p.name == "seed" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return {"seed": seed} if takes else {}


def server_manifest(run_config: dict, scenario: Scenario, seed: int) -> PartitionManifest:
    """What the server knows of the data, from the run config's ``partition-manifest`` (or the
    ``manifest.json`` in ``partition-dir``), checked against (scenario, seed)."""
    where = str(run_config.get("partition-manifest") or run_config.get("partition-dir") or "")
    if not where:
        raise FederationError("the run config names no partition-manifest: export the parties' files with "
                              "bench partitions and pass partition-manifest=<dir>/manifest.json")
    return read_manifest(where, scenario, seed)


def resolve_scenario(value: str, scale: str) -> Scenario:
    value = value.strip()
    return Scenario.from_json(value) if value.startswith("{") else get_scenario(value, scale)


def initial_model(scenario: Scenario, manifest: PartitionManifest, seed: int, init_weights: str):
    """The global model before round 1: the run seed's initialisation, or the public checkpoint."""
    model = task.build_model(scenario, manifest, seed=derive_seed("init", seed))
    if scenario.pretrain and not init_weights:
        raise FederationError(f"scenario {scenario.name!r} starts from {scenario.pretrain} pretraining: the run "
                              "config must name its checkpoint (init-weights=<path>, benchmark.pretrain)")
    if init_weights:  # the public checkpoint (benchmark.pretrain), the same for every party
        model.load_state_dict(torch.load(init_weights, map_location="cpu", weights_only=True))
    return model


def run_federation(grid: Grid, run_config: dict,
                   on_round: Callable[[int], None] | None = None,
                   on_round_metrics: Callable[[int, dict], None] | None = None) -> dict:
    """Train one scenario federatedly; write ``global_model.pt`` and ``history.json`` to out-dir.
    ``on_round_metrics(r, metrics)`` after each round: the aggregated client metrics, the
    screening counts and the mechanism's ``epsilon`` spent so far (the server's own accounting)."""
    scenario = resolve_scenario(str(run_config["scenario"]), str(run_config.get("scale", "cpu")))
    seed = int(run_config["seed"])
    out_dir = Path(str(run_config["out-dir"]))
    partition_dir = str(run_config.get("partition-dir", "") or "")

    manifest = server_manifest(run_config, scenario, seed)
    model = initial_model(scenario, manifest, seed, str(run_config.get("init-weights", "") or ""))
    partition_to_node = discover_partitions(
        grid, scenario.num_clients, max(scenario.round_timeout_s or FLOWER_DEFAULT_TIMEOUT_S, MIN_DISCOVERY_WAIT_S))
    mechanism = get_mechanism(scenario.dp_mode)
    num_images = dict(enumerate(manifest.num_images))
    fedavg = SeededFedAvg(partition_to_node=partition_to_node, clients_per_round=scenario.clients_per_round,
                          seed=seed, min_train_nodes=scenario.clients_per_round,
                          train_metrics_aggr_fn=aggregate_train_metrics, weighted_by_key=mechanism.weight_key)
    side = mechanism.server_side(scenario, fedavg, partition_to_node=partition_to_node, num_images=num_images,
                                 **seed_argument(mechanism.server_side, seed))
    screened = ScreenedAggregation(
        side.strategy, min_replies=scenario.min_replies, weight_key=mechanism.weight_key,
        node_names={n: f"partition {p}" for p, n in partition_to_node.items()},
        expected_weights={n: mechanism.expected_weight(num_images[p]) for p, n in partition_to_node.items()})
    train_config = ConfigRecord({
        "scenario": scenario.to_json(), "seed": seed, "device": str(run_config.get("device", "cpu")),
        # Simulation: where the simulated parties' own files lie (a deployment's nodes name theirs),
        # and each client's torch threads (a deployed node uses its own cores).
        **({"partition-dir": partition_dir} if partition_dir else {}),
        **({"client-threads": int(run_config["client-threads"])} if run_config.get("client-threads") else {}),
    })

    round_ends: dict[int, float] = {}  # the server's clock after each round's aggregate (0: the start)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        round_ends[server_round] = time.perf_counter()
        if on_round is not None and server_round > 0:
            on_round(server_round)
        if on_round_metrics is not None and server_round > 0:
            stats = {k: v for k, v in screened.rounds.get(server_round, {}).items() if k != "problems"}
            spent = side.spent()
            on_round_metrics(server_round, {**screened.metrics.get(server_round, {}), **stats,
                                            **({"epsilon": spent} if spent is not None else {})})
        return None

    t0 = time.perf_counter()
    result = screened.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=scenario.rounds, train_config=train_config,
                            timeout=scenario.round_timeout_s or FLOWER_DEFAULT_TIMEOUT_S,
                            evaluate_fn=evaluate_fn)
    train_s = time.perf_counter() - t0
    missing = [r for r in range(1, scenario.rounds + 1) if r not in result.train_metrics_clientapp]
    if missing:
        raise FederationError(f"rounds {missing} produced no aggregate (all clients failed)")

    out_dir.mkdir(parents=True, exist_ok=True)
    write_torch(out_dir / "global_model.pt", result.arrays.to_torch_state_dict())
    history = history_record(train_s=train_s, privacy=side.record(), sampled=side.sampled,
                             screening=screened.rounds, train_metrics=result.train_metrics_clientapp,
                             round_s={r: t - round_ends[r - 1] for r, t in round_ends.items() if r - 1 in round_ends})
    if run_config.get("client-cores"):  # simulation: the cores the clients were given
        history["client_cores"] = int(run_config["client-cores"])
    write_json(out_dir / "history.json", history)
    return history


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, dict(context.run_config))
