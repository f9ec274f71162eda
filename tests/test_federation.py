"""The Flower apps, called directly (no Ray): what a client sends, what it keeps, how clients are sampled."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from benchmark.seeding import derive_seed
from benchmark.federation import client_app, task
from benchmark.federation.partition_files import export_partitions, load_federated_data
from benchmark.federation.sampling import SeededFedAvg
from benchmark.scenarios import Scenario

SCENARIO = Scenario(name="unit", num_clients=2, clients_per_round=2, rounds=1, max_train_images=24,
                    batch_size=8, num_train_timesteps=50, sample_steps=5)


@pytest.fixture(autouse=True)
def task_identity(flower_task_identity):
    """Every test here sends Flower messages (conftest.flower_task_identity)."""


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """SCENARIO's parties' files, as `bench partitions` writes them."""
    out = tmp_path_factory.mktemp("partitions")
    export_partitions(SCENARIO, 0, out)
    return out


def train_message(arrays: ArrayRecord, server_round: int = 1) -> Message:
    config = ConfigRecord({"scenario": SCENARIO.to_json(), "seed": 0, "device": "cpu",
                           "server-round": server_round})
    return Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1, message_type="train")


def fresh_context(data_dir=None, partition_id: int = 1) -> Context:
    node_config = {"partition-id": partition_id, "num-partitions": 2}
    if data_dir is not None:
        node_config["data-dir"] = str(data_dir)
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def initial_arrays() -> ArrayRecord:
    fed = load_federated_data(SCENARIO, 0, None)
    return ArrayRecord(task.build_model(SCENARIO, fed.dataset, seed=0).state_dict())


def assert_only_updates_and_scalars(reply: Message, arrays: ArrayRecord, images: np.ndarray) -> None:
    """Every record a client sends: parameter arrays shaped as the model's, scalar metrics, nothing else."""
    from flwr.app import ConfigRecord as CR

    content = reply.content
    param_shapes = {tuple(a.shape) for a in arrays.values()}
    img_shape = tuple(images.shape[1:])
    for name, record in content.items():
        assert not isinstance(record, CR), f"{name}: a ConfigRecord could carry arbitrary data"
        if isinstance(record, ArrayRecord):
            assert set(record.keys()) == set(arrays.keys())
            for key, arr in record.items():
                shape = tuple(arr.shape)
                assert shape == tuple(arrays[key].shape) and shape in param_shapes
                assert shape[-len(img_shape):] != img_shape and shape[-2:] != img_shape[-2:], key
        else:
            assert isinstance(record, MetricRecord), f"{name}: {type(record).__name__}"
            for key, value in record.items():
                assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)


@pytest.mark.parametrize("dp_mode", ["none", "local-dpsgd", "central-dp"])
def test_client_messages_hold_only_model_arrays_and_scalar_metrics(dp_mode, parts):
    import dataclasses

    scenario = SCENARIO if dp_mode == "none" else dataclasses.replace(
        SCENARIO, dp_mode=dp_mode, target_epsilon=8.0, delta=1e-5 if dp_mode == "local-dpsgd" else 0.1)
    arrays = initial_arrays()
    ctx = fresh_context(parts)
    fed = load_federated_data(SCENARIO, 0, None)
    split = fed.partition.clients[1]
    images = fed.dataset.images[split.train_idx]

    query = client_app.query(Message(RecordDict(), dst_node_id=1, message_type="query"), ctx)
    assert_only_updates_and_scalars(query, arrays, images)
    assert dict(query.content["node"]) == {"partition-id": 1}
    msg = train_message(arrays)
    msg.content["config"]["scenario"] = scenario.to_json()
    reply = client_app.train(msg, ctx)
    assert_only_updates_and_scalars(reply, arrays, images)
    content = reply.content
    assert set(content.keys()) == {"arrays", "metrics"}
    # Under DP only public metadata leaves with the update: no raw loss, no compute time (it follows
    # the secret Poisson batch sizes).
    expected = {"num-examples", "steps", "dp-weight"} | (
        {"train_loss", "client_s", "compute_s"} if dp_mode == "none" else set())
    if dp_mode == "local-dpsgd":
        expected |= {"epsilon", "noise_multiplier", "sample_rate"}
    assert dict(content["metrics"]).keys() == expected
    assert dp_mode == "none" or not any("loss" in key or key.endswith("_s") for key in content["metrics"])
    if dp_mode == "none":
        assert 0 < content["metrics"]["compute_s"] <= content["metrics"]["client_s"]
    assert content["metrics"]["num-examples"] == len(split.train_idx)
    # The update changed the model.
    new = content["arrays"].to_torch_state_dict()
    old = arrays.to_torch_state_dict()
    assert any(not torch.equal(new[k], old[k]) for k in old)


def test_local_dp_noise_is_secret_by_default_and_non_dp_training_is_bit_identical(parts):
    """The same message (run seed, round, model) twice: under local DP the updates differ (the DP
    noise and Poisson batches come from OS entropy, not the run seed); without DP they are
    bit-identical; secret-randomness=true makes even the non-DP update unrepeatable."""
    import dataclasses

    dp = dataclasses.replace(SCENARIO, dp_mode="local-dpsgd", target_epsilon=8.0, delta=1e-5)
    arrays = initial_arrays()

    def update(scenario, node_config=None):
        msg = train_message(arrays)
        msg.content["config"]["scenario"] = scenario.to_json()
        ctx = fresh_context(parts)
        ctx.node_config.update(node_config or {})
        return client_app.train(msg, ctx).content["arrays"].to_torch_state_dict()

    a, b = update(dp), update(dp)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    c, d = update(SCENARIO), update(SCENARIO)
    assert all(torch.equal(c[k], d[k]) for k in c)
    e = update(SCENARIO, {"secret-randomness": "true"})
    assert any(not torch.equal(c[k], e[k]) for k in c)


def test_optimizer_state_lives_in_context_across_rounds(parts):
    arrays = initial_arrays()
    ctx = fresh_context(parts)
    client_app.train(train_message(arrays, 1), ctx)
    state = ctx.state[client_app.OPTIMIZER_STATE_KEY].to_torch_state_dict()
    steps_after_1 = float(state["0.step"])
    assert steps_after_1 > 0
    client_app.train(train_message(arrays, 2), ctx)
    state2 = ctx.state[client_app.OPTIMIZER_STATE_KEY].to_torch_state_dict()
    assert float(state2["0.step"]) == 2 * steps_after_1  # Adam resumed, not restarted


def test_optimizer_state_roundtrip():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    flat = task.optimizer_state_to_tensors(opt)
    opt2 = torch.optim.Adam(model.parameters())
    task.load_optimizer_state(opt2, flat)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


def test_the_client_optimizer_is_the_registered_one_and_an_unknown_name_is_refused():
    """Each name builds its torch optimizer with the scenario's learning rate and torch's defaults
    otherwise; a name outside the registry is refused in one line, never replaced."""
    from types import SimpleNamespace

    from benchmark.optimizers import UnknownOptimizerError

    model = torch.nn.Linear(3, 2)
    for name, cls in (("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)):
        opt = task.make_optimizer(model, Scenario(name="o", optimizer=name, learning_rate=3e-3))
        assert type(opt) is cls and opt.defaults == cls(model.parameters(), lr=3e-3).defaults
    with pytest.raises(UnknownOptimizerError, match=r"^unknown optimizer 'adamw' \(known: adam, sgd\)$"):
        task.make_optimizer(model, SimpleNamespace(optimizer="adamw", learning_rate=1e-3))


class FakeGrid:
    def get_node_ids(self):
        return [101, 202, 303, 404]


def test_round_metrics_sum_and_max_the_clients_seconds_and_keep_the_worst_privacy_figure():
    from flwr.app import MetricRecord, RecordDict

    from benchmark.federation.sampling import aggregate_train_metrics

    def reply(n, client_s, compute_s, loss, **extra):
        return RecordDict({"metrics": MetricRecord({"num-examples": n, "client_s": client_s,
                                                    "compute_s": compute_s, "train_loss": loss, **extra})})

    out = aggregate_train_metrics([reply(10, 2.0, 1.5, 1.0, epsilon=2.0), reply(30, 5.0, 4.0, 3.0, epsilon=3.0)],
                                  "num-examples")
    assert out["client_s_sum"] == 7.0 and out["client_s_max"] == 5.0
    assert out["compute_s_sum"] == 5.5 and out["compute_s_max"] == 4.0
    assert "client_s" not in out and "compute_s" not in out   # a weighted mean of seconds means nothing
    assert out["train_loss"] == 2.5 and out["epsilon"] == 3.0
    dp = aggregate_train_metrics([RecordDict({"metrics": MetricRecord({"dp-weight": 1.0, "steps": 4})})], "dp-weight")
    assert not any(k.startswith(("client_s", "compute_s")) for k in dp)


def test_history_records_each_rounds_wall_time():
    from benchmark.federation.record import history_record

    metrics = {1: {"train_loss": 1.0}, 2: {"train_loss": 0.5}}
    h = history_record(train_s=3.0, privacy={}, sampled={}, screening={}, train_metrics=metrics,
                       round_s={1: 1.25, 2: 1.75})
    assert [r["round_s"] for r in h["rounds"]] == [1.25, 1.75]


def test_seeded_sampling_is_reproducible_and_uses_partitions():
    mapping = {0: 404, 1: 101, 2: 303, 3: 202}

    def sampled(seed):
        strat = SeededFedAvg(partition_to_node=mapping, clients_per_round=2, seed=seed, min_train_nodes=2)
        rounds = []
        for r in range(1, 6):
            msgs = list(strat.configure_train(r, ArrayRecord(), ConfigRecord(), FakeGrid()))
            assert sorted(m.metadata.dst_node_id for m in msgs) == sorted(mapping[p] for p in strat.sampled[r])
            rounds.append(tuple(strat.sampled[r]))
        return rounds

    assert sampled(0) == sampled(0)
    assert sampled(0) != sampled(1)
    assert all(len(set(r)) == 2 for r in sampled(0))


def test_derive_seed_is_stable():
    assert derive_seed("a", 1) == derive_seed("a", 1) != derive_seed("a", 2)
    assert 0 <= derive_seed("x") < 2**63
    assert isinstance(np.random.default_rng(derive_seed("x")), np.random.Generator)


# ------------------------------------------------------------------ central DP (Flower wrappers)
@pytest.mark.parametrize("side", ["server", "client"])
def test_central_dp_bounds_a_malicious_clients_influence(side):
    from privacy.central import KEY_CLIPPING_NORM, central_clipping_mod, wrap_central_dp
    from privacy.mechanisms.base import UNIFORM_WEIGHT_KEY

    clip, m, dim, sigma = 0.5, 2, 1000, 1e-3
    base = SeededFedAvg(partition_to_node={0: 101, 1: 202}, clients_per_round=m, seed=0, min_train_nodes=m,
                        weighted_by_key=UNIFORM_WEIGHT_KEY)
    strat = wrap_central_dp(base, noise_multiplier=sigma, clipping_norm=clip, clients_per_round=m,
                            num_clients=2, delta=1e-3, side=side)
    current = ArrayRecord({"w": torch.zeros(dim)})
    msgs = list(strat.configure_train(1, current, ConfigRecord(), FakeGrid()))
    assert (KEY_CLIPPING_NORM in msgs[0].content["config"]) == (side == "client")
    # Honest: a small update (an exactly-zero update crashes Flower 1.42's clipping with a
    # ZeroDivisionError in compute_clip_model_update). Malicious: a huge one.
    honest = torch.full((dim,), 1e-4)
    updates = [honest, torch.full((dim,), 1e6)]
    replies = []
    for msg, upd in zip(msgs, updates):
        def client(msg_in, ctx, upd=upd):
            return Message(RecordDict({"arrays": ArrayRecord({"w": upd}),
                                       "metrics": MetricRecord({UNIFORM_WEIGHT_KEY: 1.0, "num-examples": 5})}),
                           reply_to=msg_in)
        replies.append(central_clipping_mod(msg, fresh_context(), client))
    agg, _ = strat.aggregate_train(1, replies)
    moved = float(np.linalg.norm(agg["w"].numpy()))
    slack = 6 * sigma * clip / m * np.sqrt(dim) + float(honest.norm()) / m
    assert moved <= clip / m + slack
    assert moved >= clip / m - slack  # the malicious update was clipped, not dropped
    assert strat.privacy_spent().num_releases == 1


def test_central_clipping_mod_is_a_no_op_without_a_clipping_norm():
    from privacy.central import central_clipping_mod

    msg = train_message(initial_arrays())
    sentinel = object()
    assert central_clipping_mod(msg, fresh_context(), lambda m, c: sentinel) is sentinel


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("attack_scale", [1e2, 1e8])
def test_one_malicious_client_moves_the_aggregate_by_at_most_clip_over_m(side, attack_scale):
    """Same honest clients and the same noise draw, once with a malicious client and once with
    that client sending no change: the aggregates differ by at most clip / clients_per_round."""
    from privacy.central import central_clipping_mod, wrap_central_dp
    from privacy.mechanisms.base import UNIFORM_WEIGHT_KEY

    clip, m, sigma = 0.5, 4, 0.3
    nodes = {p: 101 + p for p in range(m)}
    rng = np.random.default_rng(0)
    shapes = {"w": (16, 8), "b": (8,)}
    current = {k: torch.from_numpy(rng.normal(size=s).astype(np.float32)) for k, s in shapes.items()}
    honest = [{k: current[k] + 0.05 * torch.from_numpy(rng.normal(size=s).astype(np.float32))
               for k, s in shapes.items()} for _ in range(m - 1)]
    attack = {k: current[k] + attack_scale * torch.from_numpy(rng.normal(size=s).astype(np.float32))
              for k, s in shapes.items()}
    # A tiny non-zero change (an exactly-zero update crashes Flower 1.42's clipping).
    idle = {k: current[k] + 1e-7 for k in shapes}

    class Grid4:
        def get_node_ids(self):
            return list(nodes.values())

    def aggregate(last):
        base = SeededFedAvg(partition_to_node=nodes, clients_per_round=m, seed=0, min_train_nodes=m,
                            weighted_by_key=UNIFORM_WEIGHT_KEY)
        # The same noise draw twice (the federation's noise is secret; a test may seed it).
        strat = wrap_central_dp(base, noise_multiplier=sigma, clipping_norm=clip, clients_per_round=m,
                                num_clients=m, delta=1e-3, side=side, noise_rng=np.random.default_rng(1234))
        msgs = list(strat.configure_train(1, ArrayRecord(current), ConfigRecord(), Grid4()))
        replies = []
        for msg, upd in zip(msgs, honest + [last]):
            def client(msg_in, ctx, upd=upd):
                return Message(RecordDict({"arrays": ArrayRecord(upd),
                                           "metrics": MetricRecord({UNIFORM_WEIGHT_KEY: 1.0})}), reply_to=msg_in)
            replies.append(central_clipping_mod(msg, fresh_context(), client))
        agg, _ = strat.aggregate_train(1, replies)
        return np.concatenate([agg[k].numpy().ravel() for k in sorted(shapes)])

    moved = float(np.linalg.norm(aggregate(attack) - aggregate(idle)))
    assert moved <= clip / m * (1 + 1e-5) + 1e-6
    assert moved >= 0.9 * clip / m  # clipped to the bound, not dropped


# ------------------------------------------------------------------ a party owns its data
def test_a_client_reads_only_its_own_partition_file(parts, monkeypatch, tmp_path):
    """The client trains on partition p's images from partition p's file, and cannot load the
    dataset: every route to it raises inside the client."""
    import shutil

    from benchmark import data
    from benchmark.federation import partition_files

    fed = load_federated_data(SCENARIO, 0, None)
    arrays = initial_arrays()

    def no_dataset(*args, **kwargs):
        raise AssertionError("a client loaded the dataset")

    for target in (data, partition_files, task):
        for name in ("load_dataset", "load_federated_data"):
            if hasattr(target, name):
                monkeypatch.setattr(target, name, no_dataset)
    opened = []
    real_read = client_app.read_partition
    monkeypatch.setattr(client_app, "read_partition", lambda path, **kw: opened.append(path) or real_read(path, **kw))
    for pid in (0, 1):
        own = tmp_path / f"node{pid}"  # the node's disk holds its own file and nothing else
        own.mkdir()
        shutil.copy(parts / f"partition-{pid}.npz", own)
        reply = client_app.train(train_message(arrays), fresh_context(own, partition_id=pid))
        assert reply.content["metrics"]["num-examples"] == len(fed.partition.clients[pid].train_idx)
    assert opened == [tmp_path / "node0" / "partition-0.npz", tmp_path / "node1" / "partition-1.npz"]
    assert len(fed.partition.clients[0].train_idx) + len(fed.partition.clients[1].train_idx) == 24


def test_partition_files_hold_each_partys_training_images_in_order(tmp_path):
    """What a party reads is what indexing the full dataset gave before (canaries included), so
    training figures do not change; the manifest holds counts and shape, no images."""
    import dataclasses
    import json

    from benchmark.federation.partition_files import read_manifest, read_partition

    scenario = dataclasses.replace(SCENARIO, canaries=2, attacks=("mia-loss",))
    fed = load_federated_data(scenario, 3, None)
    manifest = export_partitions(scenario, 3, tmp_path)
    for pid, split in enumerate(fed.partition.clients):
        got = read_partition(tmp_path / f"partition-{pid}.npz", scenario=scenario, seed=3, partition_id=pid)
        np.testing.assert_array_equal(got.images, fed.dataset.images[split.train_idx])
        np.testing.assert_array_equal(got.labels, fed.dataset.labels[split.train_idx])
        assert got.image_shape == (1, 28, 28) and got.num_classes == 10
    plain = load_federated_data(SCENARIO, 3, None)
    assert manifest.num_images == (len(plain.partition.clients[0].train_idx) + len(fed.canary_members),
                                   len(plain.partition.clients[1].train_idx))
    assert read_manifest(tmp_path, scenario, 3) == manifest
    text = (tmp_path / "manifest.json").read_text()
    assert set(json.loads(text)) == {"format", "dataset", "num_classes", "image_shape", "num_partitions", "seed",
                                     "scenario_hash", "partition_key", "partitions"}
    assert "train_idx" not in text and len(text) < 2000


def test_a_file_for_another_party_seed_or_split_is_refused_in_one_line(parts, tmp_path):
    import dataclasses

    from benchmark.federation.partition_files import PartitionFileError, read_manifest, read_partition
    from benchmark.federation.errors import FederationError
    from benchmark.federation.server_app import server_manifest

    f1 = parts / "partition-1.npz"
    cases = [
        (dict(scenario=SCENARIO, seed=0, partition_id=0), "holds partition 1, this node is partition 0"),
        (dict(scenario=SCENARIO, seed=1, partition_id=1), "is for seed 0, the run uses seed 1"),
        (dict(scenario=dataclasses.replace(SCENARIO, max_train_images=20), seed=0, partition_id=1),
         "holds another split"),
        (dict(scenario=dataclasses.replace(SCENARIO, num_clients=3, clients_per_round=2), seed=0, partition_id=1),
         "among 2 parties"),
    ]
    for kwargs, message in cases:
        with pytest.raises(PartitionFileError, match=message) as err:
            read_partition(f1, **kwargs)
        assert "\n" not in str(err.value)
    # Training-only fields do not change the split: the same file serves a DP variant.
    dp = dataclasses.replace(SCENARIO, dp_mode="local-dpsgd", target_epsilon=8.0, delta=1e-5, local_epochs=2)
    assert read_partition(f1, scenario=dp, seed=0, partition_id=1).partition_id == 1
    with pytest.raises(PartitionFileError, match="does not exist"):
        read_partition(tmp_path / "partition-1.npz", scenario=SCENARIO, seed=0, partition_id=1)
    with pytest.raises(PartitionFileError, match="has no partition file: start its SuperNode with"):
        client_app.train(train_message(initial_arrays()), fresh_context())
    with pytest.raises(PartitionFileError, match="is for seed 0, the run uses seed 2"):
        read_manifest(parts / "manifest.json", SCENARIO, 2)
    with pytest.raises(FederationError, match="names no partition-manifest"):
        server_manifest({"scenario": "x"}, SCENARIO, 0)
    assert server_manifest({"partition-manifest": str(parts / "manifest.json")}, SCENARIO, 0).num_images == (12, 12)


# ------------------------------------------------------------------ partition discovery
class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


class DiscoveryGrid:
    """Nodes that join at ``join`` s, answer a query ``delay`` s after it is sent with partition
    ``pid``, or with the Flower errors in ``errors`` first (one per query)."""

    def __init__(self, clock, nodes):
        self.clock, self.nodes = clock, nodes
        self.sent: dict[str, tuple[Message, float]] = {}
        self.pushes: dict[int, int] = {}
        self.count = 0

    def get_node_ids(self):
        return [n for n, spec in self.nodes.items() if spec.get("join", 0) <= self.clock()]

    def push_messages(self, msgs):
        ids = []
        for msg in msgs:
            self.count += 1
            mid = f"m{self.count}"
            msg.metadata.__dict__["_message_id"] = mid
            self.sent[mid] = (msg, self.clock())
            node = msg.metadata.dst_node_id
            self.pushes[node] = self.pushes.get(node, 0) + 1
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        from flwr.app import Error

        out = []
        for mid in ids:
            msg, at = self.sent[mid]
            spec = self.nodes[msg.metadata.dst_node_id]
            if spec.get("errors"):
                code, reason = spec["errors"].pop(0)
                out.append(Message(Error(code, reason), reply_to=msg))
            elif self.clock() >= at + spec.get("delay", 0) and "pid" in spec:
                out.append(Message(RecordDict({"node": MetricRecord({"partition-id": spec["pid"]})}), reply_to=msg))
        for reply in out:
            del self.sent[reply.metadata.reply_to_message_id]
        return out


def discover(nodes, num_clients=4, timeout_s=120.0):
    from benchmark.federation.discovery import discover_partitions

    clock = Clock()
    grid = DiscoveryGrid(clock, nodes)
    return discover_partitions(grid, num_clients, timeout_s, clock=clock, sleep=clock.sleep), grid, clock


def test_discovery_waits_for_slow_and_late_nodes_as_long_as_they_make_progress():
    # Every answer comes 100 s after the previous one and the last node joins at 350 s: a fixed
    # 120 s window (the old NODE_WAIT_S) failed here; each answer is progress, so this succeeds.
    nodes = {101: {"pid": 2, "delay": 100}, 202: {"pid": 0, "delay": 200}, 303: {"pid": 3, "delay": 300},
             404: {"pid": 1, "join": 350, "delay": 50}}
    mapping, grid, clock = discover(nodes)
    assert mapping == {0: 202, 1: 404, 2: 101, 3: 303}
    assert grid.pushes == {101: 1, 202: 1, 303: 1, 404: 1}  # one query each, collected whenever it came
    assert 400 <= clock.t < 402


def test_discovery_asks_again_after_an_undelivered_query():
    from flwr.common.constant import ErrorCode

    nodes = {101: {"pid": 0, "errors": [(ErrorCode.NODE_UNAVAILABLE, "offline"),
                                        (ErrorCode.MESSAGE_UNAVAILABLE, "expired")]},
             202: {"pid": 1}}
    mapping, grid, _ = discover(nodes, num_clients=2)
    assert mapping == {0: 101, 1: 202} and grid.pushes == {101: 3, 202: 1}


@pytest.mark.parametrize("nodes,message", [
    ({101: {"pid": 1}, 202: {"pid": 1}, 303: {"pid": 0}}, r"nodes 101 and 202 both claim partition 1"),
    ({101: {"pid": 4}, 202: {"pid": 1}}, r"node 101 claims partition 4, the scenario has partitions 0\.\.3"),
    ({101: {"pid": 0}, 202: {"errors": [(2, "KeyError: 'partition-id'\nTraceback ...")]}},
     r"node 202 failed the partition query \(error code 2\): KeyError: 'partition-id'$"),
])
def test_discovery_fails_at_once_on_what_waiting_cannot_fix(nodes, message):
    from benchmark.federation.errors import FederationError

    with pytest.raises(FederationError, match=message) as err:
        discover(nodes)
    assert "\n" not in str(err.value)


def test_discovery_timeout_names_the_missing_partitions_and_silent_nodes():
    from flwr.common.constant import ErrorCode

    from benchmark.federation.errors import FederationError

    nodes = {101: {"pid": 0}, 202: {"pid": 1, "delay": 50}, 303: {},  # 303 never answers
             404: {"errors": [(ErrorCode.NODE_UNAVAILABLE, "offline")] * 1000}}
    with pytest.raises(FederationError) as err:
        discover(nodes)
    msg = str(err.value)
    assert msg.startswith("partition discovery made no progress for 120 s: partitions [2, 3] never claimed; "
                          "4 node(s) connected, 2 answered, no answer from nodes [303, 404]; last errors: "
                          "node 404: error code 5: offline")
    assert "\n" not in msg


def test_bench_partitions_writes_one_file_per_party_and_a_manifest(tmp_path, capsys):
    from benchmark.cli import main
    from benchmark.federation.partition_files import read_manifest

    assert main(["partitions", "--scenario", SCENARIO.to_json(), "--seed", "0", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "partition-0.npz", "partition-1.npz"]
    assert read_manifest(tmp_path, SCENARIO, 0).num_images == (12, 12)
    assert "partition 1: 12 images" in capsys.readouterr().out
    assert main(["partitions", "--scenario", "no-such-scenario", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and err.count("\n") == 1 and not (tmp_path / "x").exists()
