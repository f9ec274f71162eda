"""The Flower apps, called directly (no Ray): what a client sends, what it keeps, how clients are sampled."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from benchmark.seeding import derive_seed
from benchmark.federation import client_app, task
from benchmark.federation.server_app import SeededFedAvg
from benchmark.scenarios import Scenario

SCENARIO = Scenario(name="unit", num_clients=2, clients_per_round=2, rounds=1, max_train_images=24,
                    batch_size=8, num_train_timesteps=50, sample_steps=5)


@pytest.fixture(autouse=True)
def task_identity():
    """Flower stamps messages with the process's task identity, which a runtime normally sets."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None


def train_message(arrays: ArrayRecord, server_round: int = 1) -> Message:
    config = ConfigRecord({"scenario": SCENARIO.to_json(), "seed": 0, "device": "cpu",
                           "server-round": server_round})
    return Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1, message_type="train")


def fresh_context() -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": 1, "num-partitions": 2},
                   state=RecordDict(), run_config={})


def initial_arrays() -> ArrayRecord:
    fed = task.load_federated_data(SCENARIO, 0, None)
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


@pytest.mark.parametrize("dp_mode", ["none", "local-dpsgd"])
def test_client_messages_hold_only_model_arrays_and_scalar_metrics(dp_mode):
    import dataclasses

    scenario = SCENARIO if dp_mode == "none" else dataclasses.replace(
        SCENARIO, dp_mode="local-dpsgd", target_epsilon=8.0, delta=1e-5)
    arrays = initial_arrays()
    ctx = fresh_context()
    fed = task.load_federated_data(SCENARIO, 0, None)
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
    expected = {"num-examples", "train_loss", "steps", "dp-weight"}
    if dp_mode == "local-dpsgd":
        expected |= {"epsilon", "noise_multiplier", "sample_rate"}
    assert dict(content["metrics"]).keys() == expected
    assert content["metrics"]["num-examples"] == len(split.train_idx)
    # The update changed the model.
    new = content["arrays"].to_torch_state_dict()
    old = arrays.to_torch_state_dict()
    assert any(not torch.equal(new[k], old[k]) for k in old)


def test_secret_randomness_keeps_local_dp_noise_from_the_server():
    """By default a client's DP-SGD run is a function of the run seed (reproducible, and so
    replayable by the server); with secret-randomness the same message gives a different update."""
    import dataclasses

    scenario = dataclasses.replace(SCENARIO, dp_mode="local-dpsgd", target_epsilon=8.0, delta=1e-5)
    arrays = initial_arrays()

    def update(node_config):
        msg = train_message(arrays)
        msg.content["config"]["scenario"] = scenario.to_json()
        ctx = fresh_context()
        ctx.node_config.update(node_config)
        return client_app.train(msg, ctx).content["arrays"].to_torch_state_dict()

    a, b = update({}), update({})
    assert all(torch.equal(a[k], b[k]) for k in a)
    c, d = update({"secret-randomness": "true"}), update({"secret-randomness": "true"})
    assert any(not torch.equal(c[k], d[k]) for k in c)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_optimizer_state_lives_in_context_across_rounds():
    arrays = initial_arrays()
    ctx = fresh_context()
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


class FakeGrid:
    def get_node_ids(self):
        return [101, 202, 303, 404]


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
    from privacy.central import KEY_CLIPPING_NORM, UNIFORM_WEIGHT_KEY, central_clipping_mod, wrap_central_dp

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
    from privacy.central import UNIFORM_WEIGHT_KEY, central_clipping_mod, wrap_central_dp

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
        strat = wrap_central_dp(base, noise_multiplier=sigma, clipping_norm=clip, clients_per_round=m,
                                num_clients=m, delta=1e-3, side=side)
        msgs = list(strat.configure_train(1, ArrayRecord(current), ConfigRecord(), Grid4()))
        replies = []
        for msg, upd in zip(msgs, honest + [last]):
            def client(msg_in, ctx, upd=upd):
                return Message(RecordDict({"arrays": ArrayRecord(upd),
                                           "metrics": MetricRecord({UNIFORM_WEIGHT_KEY: 1.0})}), reply_to=msg_in)
            replies.append(central_clipping_mod(msg, fresh_context(), client))
        np.random.seed(1234)  # Flower draws the noise from numpy's global RNG: the same draw twice
        agg, _ = strat.aggregate_train(1, replies)
        return np.concatenate([agg[k].numpy().ravel() for k in sorted(shapes)])

    moved = float(np.linalg.norm(aggregate(attack) - aggregate(idle)))
    assert moved <= clip / m * (1 + 1e-5) + 1e-6
    assert moved >= 0.9 * clip / m  # clipped to the bound, not dropped
