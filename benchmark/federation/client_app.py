"""The Flower ClientApp: one hospital (party) training the shared DDPM on its own images.

What leaves the client: the updated model arrays and scalar metrics. Never images, labels or
indices. Without DP the metrics are its example count, steps and mean training loss; under any DP
mode (``DPMode.private``) only public metadata (example count, steps, the equal ``dp-weight``; under
local DP also the plan's noise multiplier and sample rate and the client's own epsilon report,
which the server checks against its own figure): the loss is the client's raw, unnoised,
data-dependent value, and under central DP the update itself reaches the server before its noise.
The optimizer state lives across rounds in the node's Flower ``context.state`` (no module
globals), so the same app works in simulation and in deployment.

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
training randomness secret too (see :func:`client_train_seed`).
"""

from __future__ import annotations

import json
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
from privacy.central import central_clipping_mod
from privacy.modes import get_dp_mode
from privacy.noise import secret_seed

app = ClientApp()

OPTIMIZER_STATE_KEY = "optimizer"
ACCOUNTANT_STATE_KEY = "dp-accountant"


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
    cfg = msg.content["config"]
    scenario = Scenario.from_json(str(cfg["scenario"]))
    seed = int(cfg["seed"])
    server_round = int(cfg["server-round"])
    device = str(cfg.get("device", "cpu"))
    pid = int(context.node_config["partition-id"])
    torch.set_num_threads(int(cfg.get("client-threads", 1)))

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
    mode = get_dp_mode(scenario.dp_mode)
    extra = {}
    if mode.clients_run_dpsgd:
        from privacy.dpsgd import dp_train_epochs

        plan = task.local_dp_plan(scenario, len(images))
        saved = context.state.get(ACCOUNTANT_STATE_KEY)
        history = json.loads(str(saved["history"])) if saved is not None else []
        # The Poisson sampling and DP noise come from secret generators (dp_train_epochs' default).
        stats = dp_train_epochs(model, optimizer, plan, images, labels, epochs=scenario.local_epochs,
                                num_train_timesteps=scenario.num_train_timesteps,
                                conditional=scenario.class_conditional, device=device, seed=train_seed,
                                accountant_history=history)
        context.state[ACCOUNTANT_STATE_KEY] = ConfigRecord({"history": json.dumps(stats["history"])})
        extra = {"epsilon": stats["epsilon"], "noise_multiplier": plan.noise_multiplier,
                 "sample_rate": plan.sample_rate}
    else:
        stats = task.local_train(scenario, model, optimizer, images, labels, device=device, seed=train_seed)

    context.state[OPTIMIZER_STATE_KEY] = ArrayRecord(task.optimizer_state_to_tensors(optimizer))
    # Under DP only public metadata leaves with the update: the loss is raw and data-dependent.
    loss = {} if mode.private else {"train_loss": float(stats["loss"])}
    content = RecordDict({
        "arrays": ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()}),
        "metrics": MetricRecord({
            "num-examples": len(images), **loss, "steps": int(stats["steps"]), "dp-weight": 1.0, **extra,
        }),
    })
    return Message(content=content, reply_to=msg)
