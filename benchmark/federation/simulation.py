"""Run the ServerApp/ClientApp pair in Flower's simulation engine (Ray backend).

``flwr.simulation.run_simulation`` gives the ServerApp an empty run config, so we wrap the same
``run_federation`` in a ServerApp that carries the run config explicitly. Ray is given the cores
this process may use; every client runs in a Ray actor that reserves its share of them and as
many torch threads (:mod:`benchmark.threads`), and ``gpu_fraction`` of a GPU when the device is
CUDA. The run config tells the server the cores (``client-cores``, recorded in history.json) and
the clients their threads (``client-threads``).

Simulated parties own their data as deployed ones do: unless the run config already names a
``partition-dir``, ``simulate`` (the operator who holds the dataset) exports each party's file
into ``<out-dir>/.partitions`` before Flower starts and removes the folder afterwards; a simulated
node reads only its own file, the server only the manifest.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from benchmark import quiet
from benchmark.federation.client_app import app as default_client_app
from benchmark.federation.partition_files import FederatedData, export_partitions
from benchmark.federation.server_app import resolve_scenario, run_federation
from benchmark.threads import available_cores, client_cpus


class SimulationError(RuntimeError):
    """The simulation failed (one-line message; the cause is chained)."""


def simulate(run_config: dict, *, num_clients: int, num_cpus: int | None = None,
             gpu_fraction: float = 0.0, on_round: Callable[[int, dict], None] | None = None,
             client_app: ClientApp = default_client_app, fed: FederatedData | None = None,
             ray_address: str | None = None) -> dict:
    """Run one federated training in simulation; return the round history.

    ``client_app`` is ours unless a test swaps in a faulty one. ``fed``: the run's split, already
    loaded (else it is loaded from ``data-root`` to export the parties' files). ``on_round(r, metrics)``
    after each round: the round's aggregated client metrics and screening counts.

    The simulated clients' output stays out of the terminal unless ``BENCH_VERBOSE=1``
    (:mod:`benchmark.quiet`); a client's failure still reaches the server as an error reply.

    ``ray_address``: an existing Ray cluster (``bench run --ray-address``): Flower's Ray backend joins
    it (``ray.init(address=...)``, through the backend config's ``init_args``) instead of starting
    a local Ray; each client actor still asks for its CPUs (and ``gpu_fraction`` of a GPU), now from
    the cluster's. The client threads follow this machine's cores (the policy of
    :mod:`benchmark.threads`); on a cluster of other machines give them the same cores.
    """
    run_config = dict(run_config)
    scenario = resolve_scenario(str(run_config["scenario"]), str(run_config.get("scale", "cpu")))
    cores = num_cpus or available_cores()
    per_client = client_cpus(cores, scenario.clients_per_round)
    run_config |= {"client-cores": cores, "client-threads": per_client}
    exported = None
    if not run_config.get("partition-dir"):
        exported = Path(str(run_config["out-dir"])) / ".partitions"
        export_partitions(scenario, int(run_config["seed"]), exported, fed=fed,
                          data_root=str(run_config.get("data-root", "") or "") or None)
        run_config["partition-dir"] = str(exported)
    try:
        return _simulate(run_config, num_clients=num_clients, num_cpus=cores, client_cpus=per_client,
                         gpu_fraction=gpu_fraction, on_round=on_round, client_app=client_app,
                         ray_address=ray_address)
    finally:
        if exported is not None:
            shutil.rmtree(exported, ignore_errors=True)


def _simulate(run_config: dict, *, num_clients: int, num_cpus: int, client_cpus: int, gpu_fraction: float,
              on_round: Callable[[int, dict], None] | None, client_app: ClientApp,
              ray_address: str | None = None) -> dict:
    box: dict = {}

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            box["history"] = run_federation(grid, run_config, on_round_metrics=on_round)
        except Exception as e:  # noqa: BLE001 - Flower would log it and return; we re-raise it below
            box["error"] = e
            raise

    # A cluster of its own (num_cpus: this process's cores), or an existing one (which has its own).
    init_args = ({"address": ray_address} if ray_address else {"num_cpus": num_cpus}) | quiet.ray_init_args()
    backend_config = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": gpu_fraction},
        "init_args": init_args | {"include_dashboard": False},
    }
    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                       backend_config=backend_config)
    except Exception as e:  # noqa: BLE001 - re-raised with one line, cause chained
        if "error" in box:
            raise box["error"] from e
        raise SimulationError(f"federated simulation failed: {_root_message(e)}") from e
    if "error" in box:  # e.g. a round with too few valid client updates: its own one line
        raise box["error"]
    if "history" not in box:
        raise SimulationError("federated simulation ended without a result (see the Flower log above)")
    return box["history"]


def _root_message(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}".splitlines()[0]
