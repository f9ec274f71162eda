"""The Flower ClientApp: one hospital (party) training the shared DDPM on its own images.

What leaves the client: the updated model arrays and scalar metrics. Never images, labels or
indices. The scenario's DP mechanism (:meth:`privacy.mechanisms.base.Mechanism.train_client`) runs
the local training and says what the reply carries besides the image count and the equal
``dp-weight``: without DP the steps and mean training loss; under DP only public metadata (the
loss is the client's raw, data-dependent value). The optimizer state and the mechanism's own state
(a DP-SGD accountant's history) live across rounds in the node's Flower ``context.state`` (no
module globals), so the same app works in simulation and in deployment.

Node config (deployment: ``flower-supernode --node-config 'partition-id=0
partition-file="/data/partition-0.npz"'``, TOML values; simulation sets ``partition-id``):
``partition-id`` is this party's share of the scenario's split; its images come from ONE file,
never from the dataset:
``partition-file`` (the file), else ``data-dir`` (a folder holding ``partition-<id>.npz``), else
the ``partition-dir`` of the server's train config (simulation only: ``simulate`` exports each
simulated party's file into the run's work folder). Files are written by ``bench partitions``
(:mod:`benchmark.federation.partition_files`); one exported for another split, seed or
partition id is refused in one line. The DP noise and Poisson sampling of local DP-SGD are always
secret (:mod:`privacy.noise`); ``secret-randomness=true`` (optional) makes the rest of the local
training randomness secret too (see :func:`client_train_seed`). ``threads`` (optional) caps the
node's torch threads (default: the cores it may run on, :func:`client_threads`).
"""

from __future__ import annotations

import time
from logging import DEBUG, INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore import log

from benchmark.federation import task
from benchmark.federation.partition_files import PartitionData, PartitionFileError, partition_file_name, read_partition
from benchmark.scenarios import Scenario
from benchmark.seeding import derive_seed
from benchmark.threads import available_cores
from privacy.central import central_clipping_mod
from privacy.mechanisms import get_mechanism
from privacy.mechanisms.base import CLIENT_S_KEY, COMPUTE_S_KEY, EXAMPLES_WEIGHT_KEY, UNIFORM_WEIGHT_KEY
from privacy.noise import secret_seed

app = ClientApp()

OPTIMIZER_STATE_KEY = "optimizer"
MECHANISM_STATE_KEY = "dp-mechanism"


def client_train_seed(context: Context, seed: int, pid: int, server_round: int) -> int:
    """The seed of this round's local training randomness *other than DP*: the diffusion noise and
    timesteps (and, without DP, the batch order).

    The DP-SGD noise and Poisson batches never derive from it: they are always drawn from
    generators seeded from OS entropy (:mod:`privacy.noise`), so local DP holds against anyone
    who reads the published run seed, the server included. By default this seed derives from the
    run seed, which keeps runs reproducible up to the DP noise and lets a curious server replay
    the diffusion noise and timesteps (the ``known``-randomness inversion attacker of
    :mod:`attacks.inversion`). A party that wants those secret too starts its SuperNode with
    ``--node-config "secret-randomness=true ..."``: the seed is then drawn from the OS's CSPRNG
    every round and never leaves the node (that defeats the known-randomness attacker; the run
    is then not reproducible).
    """
    if str(context.node_config.get("secret-randomness", "false")).lower() in ("1", "true", "yes"):
        return secret_seed()
    return derive_seed("client-train", seed, pid, server_round)


def client_threads(context: Context, config) -> int:
    """This node's torch threads: its node config's ``threads``, else the simulation's share of
    the cores (``client-threads``, :mod:`benchmark.threads`), else the cores the node may use."""
    value = context.node_config.get("threads") or config.get("client-threads")
    return int(value) if value else available_cores()


def partition_path(context: Context, config) -> Path:
    """Where this node's partition file is: node config first (a deployment), then the server's
    ``partition-dir`` (simulation)."""
    pid = int(context.node_config["partition-id"])
    if context.node_config.get("partition-file"):
        return Path(str(context.node_config["partition-file"]))
    folder = context.node_config.get("data-dir") or config.get("partition-dir")
    if not folder:
        raise PartitionFileError(f"node of partition {pid} has no partition file: start its SuperNode with "
                                 f"--node-config 'partition-id={pid} partition-file=\"PATH\"' (see bench partitions)")
    return Path(str(folder)) / partition_file_name(pid)


def load_own_partition(context: Context, config, scenario: Scenario, seed: int) -> PartitionData:
    """This party's images and labels, from its own file only."""
    pid = int(context.node_config["partition-id"])
    data = read_partition(partition_path(context, config), scenario=scenario, seed=seed, partition_id=pid)
    # A deployed node says what it holds (its SuperNode's log); simulated ones stay quiet.
    own = bool(context.node_config.get("partition-file") or context.node_config.get("data-dir"))
    log(INFO if own else DEBUG, "feddp: partition %d holds %d training images (%s)", pid, len(data.labels), data.path)
    return data


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (so it can sample clients reproducibly)."""
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"node": MetricRecord({"partition-id": pid})}), reply_to=msg)


@app.train(mods=[central_clipping_mod])  # mods on @app.train, not on the ClientApp (Flower 1.42)
def train(msg: Message, context: Context) -> Message:
    t_start = time.perf_counter()
    cfg = msg.content["config"]
    scenario = Scenario.from_json(str(cfg["scenario"]))
    seed = int(cfg["seed"])
    server_round = int(cfg["server-round"])
    device = str(cfg.get("device", "cpu"))
    pid = int(context.node_config["partition-id"])
    torch.set_num_threads(client_threads(context, cfg))

    data = load_own_partition(context, cfg, scenario, seed)
    images, labels = data.images, data.labels

    model = task.build_model(scenario, data)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.to(device)
    optimizer = task.make_optimizer(model, scenario)
    if OPTIMIZER_STATE_KEY in context.state:
        flat = context.state[OPTIMIZER_STATE_KEY].to_torch_state_dict()
        task.load_optimizer_state(optimizer, {k: v.to(device) for k, v in flat.items()})

    train_seed = client_train_seed(context, seed, pid, server_round)
    saved = context.state.get(MECHANISM_STATE_KEY)
    state = {k: str(v) for k, v in saved.items()} if saved is not None else {}
    mechanism = get_mechanism(scenario.dp_mode)
    t_train = time.perf_counter()
    metrics = mechanism.train_client(scenario, model, optimizer, images, labels, device=device,
                                     seed=train_seed, state=state, partition=pid, run_seed=seed)
    compute_s = time.perf_counter() - t_train
    if state:
        context.state[MECHANISM_STATE_KEY] = ConfigRecord(state)
    context.state[OPTIMIZER_STATE_KEY] = ArrayRecord(task.optimizer_state_to_tensors(optimizer))
    if mechanism.reports_timing:
        metrics |= {CLIENT_S_KEY: time.perf_counter() - t_start, COMPUTE_S_KEY: compute_s}
    content = RecordDict({
        "arrays": ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()}),
        "metrics": MetricRecord({EXAMPLES_WEIGHT_KEY: len(images), **metrics, UNIFORM_WEIGHT_KEY: 1.0}),
    })
    return Message(content=content, reply_to=msg)
