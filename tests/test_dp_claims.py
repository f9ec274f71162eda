"""The DP noise is secret, the accountant is charged exactly what the
sampler runs, the published epsilon is the server's, and under DP no loss leaves a client."""

import dataclasses
import json
import math
import types

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from benchmark.federation import client_app
from privacy.ledger import LedgerError
from privacy.mechanisms import LOCAL_DPSGD
from benchmark.federation.partition_files import export_partitions
from test_federation import task_identity  # noqa: F401  (autouse fixture: Flower's task identity)
from test_federation import SCENARIO, fresh_context, initial_arrays, train_message

LOCAL = dataclasses.replace(SCENARIO, dp_mode="local-dpsgd", target_epsilon=8.0, delta=1e-5, rounds=3)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """SCENARIO's parties' files, as `bench partitions` writes them."""
    out = tmp_path_factory.mktemp("partitions")
    export_partitions(SCENARIO, 0, out)
    return out


@pytest.fixture
def quick_calibration(monkeypatch):
    """sigma = 1.3 for every plan: these tests are about bookkeeping, not calibration (which
    test_dp_training_charges_exactly_the_plan_and_stays_within_target checks)."""
    from privacy import dpsgd

    monkeypatch.setattr(dpsgd, "sample_level_noise", lambda **kw: 1.3)


def dp_train(ctx, server_round=1, scenario=LOCAL, arrays=None):
    msg = train_message(arrays or initial_arrays(), server_round)
    msg.content["config"]["scenario"] = scenario.to_json()
    return client_app.train(msg, ctx)


def numbers_in(obj) -> list[float]:
    """Every number in a (nested) record, JSON document or Flower record."""
    if isinstance(obj, (RecordDict, ConfigRecord, MetricRecord, dict)):
        return [x for v in obj.values() for x in numbers_in(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in numbers_in(v)]
    if isinstance(obj, str):
        try:
            return numbers_in(json.loads(obj))
        except ValueError:
            return []
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [obj]
    return []


# ------------------------------------------------------------------------ defect 1: secret DP noise
def test_dp_noise_and_poisson_sampling_come_only_from_os_entropy_and_are_never_sent(parts, monkeypatch,
                                                                                    quick_calibration):
    """Pin the OS entropy and the local-DP update becomes a function of the message: the run seed
    plays no part in the DP noise or the batches. The secret seeds reach neither the reply nor the
    node's stored state."""
    from privacy import noise

    drawn, real = [], noise.secret_seed

    def pinned(bits=noise.TORCH_SEED_BITS):
        drawn.append(0x5EC12E7 + len(drawn) % 2)  # sampling and noise each get their own seed
        return drawn[-1]

    monkeypatch.setattr(noise, "secret_seed", pinned)
    arrays = initial_arrays()
    ctx_a, ctx_b = fresh_context(parts), fresh_context(parts)
    a, b = dp_train(ctx_a, arrays=arrays), dp_train(ctx_b, arrays=arrays)
    assert len(drawn) == 4  # two generators per training, both from OS entropy
    sa, sb = (r.content["arrays"].to_torch_state_dict() for r in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for record in (a.content, ctx_a.state):
        assert not set(drawn) & set(numbers_in(record))
    # Unpinned, the same message gives another update.
    monkeypatch.setattr(noise, "secret_seed", real)
    sc = dp_train(fresh_context(parts), arrays=arrays).content["arrays"].to_torch_state_dict()
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_secret_generators_are_seeded_from_the_os_and_differ_each_time():
    from privacy.noise import secret_numpy_rng, secret_torch_generator

    assert not torch.equal(torch.randn(8, generator=secret_torch_generator()),
                           torch.randn(8, generator=secret_torch_generator()))
    assert not np.array_equal(secret_numpy_rng().normal(size=8), secret_numpy_rng().normal(size=8))


@pytest.mark.parametrize("mode", ["hooks", "ghost"])  # one of each optimizer family
def test_dp_steps_draw_noise_in_opacus_secure_mode_with_the_planned_std(mode):
    """The optimizer half of Opacus' secure mode (four Gaussians per value, no torchcsprng needed)
    keeps the noise std at noise_multiplier * clip / expected batch size."""
    from privacy.dpsgd import make_dp_step
    from privacy.noise import secret_torch_generator

    model = torch.nn.Sequential(torch.nn.Linear(100, 100))
    dp = make_dp_step(model, torch.optim.SGD(model.parameters(), lr=1.0), grad_sample_mode=mode, max_grad_norm=2.0,
                      noise_multiplier=1.5, expected_batch_size=3, noise_generator=secret_torch_generator())
    assert dp.optimizer.secure_mode
    before = model[0].weight.detach().clone()
    dp.zero_grad()
    dp.empty_batch()
    dp.step()
    moved = (model[0].weight.detach() - before).flatten()
    dp.close()
    assert abs(float(moved.std()) / (1.5 * 2.0 / 3) - 1) < 0.05


@pytest.mark.parametrize("side", ["server", "client"])
def test_central_dp_noise_is_secret_not_numpys_global_rng(side):
    """Flower draws central-DP noise from np.random's global state; ours from a secret generator:
    the global state is neither used nor able to replay the noise, and the noise has Flower's std."""
    from privacy.central import central_clipping_mod, wrap_central_dp
    from privacy.mechanisms.base import UNIFORM_WEIGHT_KEY
    from benchmark.federation.sampling import SeededFedAvg

    from test_federation import FakeGrid

    clip, m, sigma, dim = 1.0, 2, 2.0, 20000
    nodes = {0: 101, 1: 202}

    def aggregate(rng=None):
        base = SeededFedAvg(partition_to_node=nodes, clients_per_round=m, seed=0, min_train_nodes=m,
                            weighted_by_key=UNIFORM_WEIGHT_KEY)
        strat = wrap_central_dp(base, noise_multiplier=sigma, clipping_norm=clip, clients_per_round=m,
                                num_clients=2, delta=1e-3, side=side, noise_rng=rng)
        msgs = list(strat.configure_train(1, ArrayRecord({"w": torch.zeros(dim)}), ConfigRecord(), FakeGrid()))
        replies = [central_clipping_mod(msg, fresh_context(), lambda msg_in, ctx: Message(
            RecordDict({"arrays": ArrayRecord({"w": torch.full((dim,), 1e-4)}),
                        "metrics": MetricRecord({UNIFORM_WEIGHT_KEY: 1.0})}), reply_to=msg_in)) for msg in msgs]
        np.random.seed(1234)
        state = np.random.get_state()[1].copy()
        agg, _ = strat.aggregate_train(1, replies)
        assert np.array_equal(np.random.get_state()[1], state)  # numpy's global RNG untouched
        return agg["w"].numpy()

    a, b = aggregate(), aggregate()
    assert not np.array_equal(a, b)
    assert np.array_equal(aggregate(np.random.default_rng(7)), aggregate(np.random.default_rng(7)))
    assert abs(float(np.std(a)) / (sigma * clip / m) - 1) < 0.05
    # secure mode (Opacus' way): each value the halved sum of four draws of the generator
    from privacy.noise import secure_normal

    expected = secure_normal(np.random.default_rng(7), sigma * clip / m, (dim,))
    got = aggregate(np.random.default_rng(7)) - np.float32(1e-4)
    assert np.allclose(got, expected.astype(np.float32), atol=1e-6)


def test_secure_normal_has_the_asked_std_and_uses_four_draws_a_value():
    from privacy.noise import secure_normal

    rng = np.random.default_rng(3)
    x = secure_normal(rng, 2.5, (100_000,))
    assert x.shape == (100_000,) and abs(x.std() / 2.5 - 1) < 0.01 and abs(x.mean()) < 0.03
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    assert np.array_equal(secure_normal(r1, 1.0, (3,)), r2.normal(0.0, 1.0, (4, 3)).sum(0) / 2)


# -------------------------------------------------------------- defect 2: exact sampling and charge
def test_sampler_steps_rate_and_accountant_charge_match_the_plan_for_every_n(monkeypatch):
    """For n = 1..300 and B in (1, 2, 7, 32, 64): the Poisson loader runs exactly the plan's steps
    at exactly its rate, and the accountant is charged exactly (sigma, q, steps). Opacus' own
    DPDataLoader runs int(1/q) steps: one short for n = 93, B = 1."""
    from privacy import dpsgd

    monkeypatch.setattr(dpsgd, "sample_level_noise", lambda **kw: 1.0)  # the calibration is tested below
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 2, 7, 32, 64):
        for n in range(1, 301):
            plan = dpsgd.plan_local_dp(n_train=n, batch_size=batch, rounds=3, local_epochs=2, target_epsilon=4.0,
                                       delta=1e-5, max_grad_norm=1.0)
            data = torch.utils.data.TensorDataset(torch.zeros(n, 1))
            loader = dpsgd.poisson_loader(plan, data, gen)
            assert plan.steps_per_epoch == math.ceil(n / batch) and plan.sample_rate == 1 / plan.steps_per_epoch
            assert loader.batch_sampler.sample_rate == plan.sample_rate
            assert len(loader) == sum(1 for _ in loader.batch_sampler) == plan.steps_per_epoch, (n, batch)
            assert plan.max_steps == 3 * 2 * plan.steps_per_epoch
            assert dpsgd.charge([], plan, 2) == [(1.0, plan.sample_rate, 2 * plan.steps_per_epoch)]
            assert 1 <= dpsgd.expected_batch_size(plan, n) <= batch
    from opacus.data_loader import DPDataLoader  # the defect this replaces

    stock = DPDataLoader.from_data_loader(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.zeros(93, 1)), batch_size=1))
    assert len(stock) == 92


class TinyDenoiser(torch.nn.Module):
    """The smallest model diffusion_loss can train (x -> predicted noise), for many DP steps fast."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x, t, class_labels=None):
        return types.SimpleNamespace(sample=self.lin(x.flatten(1)).view_as(x))


@pytest.mark.parametrize("n,batch", [(93, 1), (49, 1), (93, 7), (300, 64), (1, 32)])
def test_dp_training_charges_exactly_the_plan_and_stays_within_target(n, batch):
    """Real DP-SGD epochs: the steps run, the accountant history after two rounds and the epsilon
    agree with the plan, and the spend over every round the plan allows is <= target
    (n = 93, B = 1 printed 4.014 for a target of 4 before)."""
    from privacy.accounting import sample_level_epsilon
    from privacy.dpsgd import plan_local_dp, dp_train_epochs

    plan = plan_local_dp(n_train=n, batch_size=batch, rounds=2, local_epochs=1, target_epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    images = np.random.default_rng(0).integers(0, 256, (n, 1, 2, 2), dtype=np.uint8)
    model = TinyDenoiser()
    history = []
    for _ in range(2):
        stats = dp_train_epochs(model, torch.optim.SGD(model.parameters(), lr=0.1), plan, images,
                                np.zeros(n, np.int64), epochs=1, num_train_timesteps=10, conditional=False,
                                device="cpu", seed=0, accountant_history=history)
        history = stats["history"]
        assert stats["steps"] == plan.steps_per_epoch
    assert history == [(plan.noise_multiplier, plan.sample_rate, plan.max_steps)]
    spent = sample_level_epsilon(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                                 steps=plan.max_steps, delta=plan.delta)
    assert stats["epsilon"] == pytest.approx(spent, rel=1e-12) and spent <= 4.0


# -------------------------------------------------------------- defect 6: the server's epsilon
class _Grid:
    def get_node_ids(self):
        return [101, 202]


class _Sink:
    """The wrapped strategy: FedAvg's sampling of both partitions, aggregation recorded."""

    def __init__(self):
        from benchmark.federation.sampling import SeededFedAvg

        self.fedavg = SeededFedAvg(partition_to_node={0: 101, 1: 202}, clients_per_round=2, seed=0,
                                   min_train_nodes=2)
        self.sampled = self.fedavg.sampled
        self.aggregated = []

    def configure_train(self, *args):
        return self.fedavg.configure_train(*args)

    def aggregate_train(self, server_round, replies):
        self.aggregated.append(server_round)
        return None, None


def server_side(num_images=(12, 12)):
    """The local-dpsgd mechanism's server side around the sink (its ledger is ``.strategy``)."""
    return LOCAL_DPSGD.server_side(LOCAL, _Sink(), partition_to_node={0: 101, 1: 202},
                                   num_images=dict(enumerate(num_images)))


def ledger(num_images=(12, 12)):
    return server_side(num_images).strategy


def run_round(led, server_round, report):
    """One round in which both partitions are sampled; ``report(pid, server_round)`` -> metrics."""
    msgs = list(led.configure_train(server_round, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), _Grid()))
    replies = []
    for msg in msgs:
        pid = {101: 0, 202: 1}[msg.metadata.dst_node_id]
        reply = Message(RecordDict({"metrics": MetricRecord(report(pid, server_round))}), reply_to=msg)
        reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
        replies.append(reply)
    return led.aggregate_train(server_round, replies)


def honest(led):
    def report(pid, server_round):
        plan = led.plans[pid]
        return {"epsilon": led.epsilon(pid, server_round), "noise_multiplier": plan.noise_multiplier,
                "sample_rate": plan.sample_rate, "steps": led.steps_per_round(pid)}
    return report


def test_the_server_computes_every_clients_epsilon_and_publishes_it(quick_calibration):
    from privacy.accounting import sample_level_epsilon

    led = ledger((12, 30))
    for r in (1, 2):
        run_round(led, r, honest(led))
    rec = led.record()
    assert [c["rounds"] for c in rec["clients"]] == [[1, 2], [1, 2]]
    plan = led.plans[0]
    assert plan.steps_per_epoch == 2 and rec["clients"][0]["steps"] == 4 and plan.noise_multiplier == 1.3
    assert rec["clients"][0]["epsilon"] == sample_level_epsilon(noise_multiplier=1.3, sample_rate=0.5, steps=4,
                                                                delta=1e-5)
    assert rec["epsilon"] == max(c["epsilon"] for c in rec["clients"]) > 0
    json.dumps(rec)  # history.json holds it


@pytest.mark.parametrize("memory", ["restarted node", "carried-over context"])
def test_a_client_whose_memory_disagrees_with_the_server_fails_the_run(memory, quick_calibration):
    led = ledger()
    run_round(led, 1, honest(led))
    rounds_remembered = {"restarted node": lambda r: r - 1, "carried-over context": lambda r: r + 1}[memory]

    def report(pid, server_round):
        return honest(led)(pid, server_round) | ({"epsilon": led.epsilon(pid, rounds_remembered(server_round))}
                                                  if pid == 1 else {})

    with pytest.raises(LedgerError, match=r"^round 2: partition 1 reports epsilon .* after 2 round\(s\)") as e:
        run_round(led, 2, report)
    assert "\n" not in str(e.value) and led.strategy.aggregated == [1]


def test_real_clients_with_lost_or_carried_history_are_caught(parts, quick_calibration):
    """The client app's own reports: a node restarted between rounds (fresh context) reports one
    round too few, a context carried over from another run one round too many."""
    led = ledger()
    led.participation[1] = [1, 2]  # partition 1 (the fresh_context's) sampled in rounds 1 and 2
    ctx = fresh_context(parts)
    assert led.report_problem(1, 1, dict(dp_train(ctx, 1).content["metrics"])) is None
    restarted = dict(dp_train(fresh_context(parts), 2).content["metrics"])
    assert "reports epsilon" in led.report_problem(1, 2, restarted)
    carried = dict(dp_train(ctx, 1).content["metrics"])  # ctx, from "another run", already holds a round
    assert "reports epsilon" in led.report_problem(1, 1, carried)
    assert led.report_problem(1, 2, carried) is None  # what it reports is two rounds' spend


def test_privacy_columns_read_the_servers_figure_and_dp_rows_have_no_train_loss(quick_calibration):
    from benchmark.runner import privacy_metrics
    from benchmark.schema import METRICS

    side = server_side()
    led = side.strategy
    run_round(led, 1, honest(led))
    history = {"privacy": side.record(), "rounds": [{"epsilon": 99.0, "noise_multiplier": 0.1, "sample_rate": 1.0}]}
    cols = privacy_metrics(LOCAL, history)
    assert cols["epsilon"] == led.record()["epsilon"] == side.spent() != 99.0
    assert history["privacy"]["guarantees"] == [{"unit": "image", "relation": "add/remove one image",
                                                 "epsilon": cols["epsilon"]}]
    assert cols["noise_multiplier"] == led.plans[0].noise_multiplier
    assert METRICS["final_train_loss"].nullable


# ------------------------------------------------ the whole federation in process (no Ray), local DP
class InProcessGrid:
    """Flower's Grid for run_federation, delivering each message to the client app in this process
    (node 101 holds partition 0, node 202 partition 1)."""

    def __init__(self, parts_dir):
        self.contexts = {101 + 101 * p: fresh_context(parts_dir, partition_id=p) for p in (0, 1)}
        self.inbox: dict[str, Message] = {}

    def get_node_ids(self):
        return list(self.contexts)

    def deliver(self, msg: Message) -> Message:
        from flwr.app import MessageType

        self.inbox_count = getattr(self, "inbox_count", 0) + 1
        msg.metadata.__dict__["_message_id"] = f"m{self.inbox_count}"
        ctx = self.contexts[msg.metadata.dst_node_id]
        app = client_app.query if msg.metadata.message_type == MessageType.QUERY else client_app.train
        reply = app(msg, ctx)
        reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
        return reply

    def push_messages(self, msgs):
        ids = []
        for msg in msgs:
            reply = self.deliver(msg)
            self.inbox[reply.metadata.reply_to_message_id] = reply
            ids.append(reply.metadata.reply_to_message_id)
        return ids

    def pull_messages(self, ids):
        return [self.inbox.pop(i) for i in ids if i in self.inbox]

    def send_and_receive(self, messages, *, timeout=None):
        return [self.deliver(m) for m in messages]


def federate(parts_dir, out_dir, on_round=None):
    from benchmark.federation.server_app import run_federation

    grid = InProcessGrid(parts_dir)
    scenario = dataclasses.replace(LOCAL, rounds=2)
    config = {"scenario": scenario.to_json(), "seed": 0, "out-dir": str(out_dir), "partition-dir": str(parts_dir)}
    return grid, run_federation(grid, config, on_round=on_round and (lambda r: on_round(grid, r)))


def test_a_local_dp_federation_publishes_the_servers_epsilon_and_no_loss_or_noise_seed(parts, tmp_path, monkeypatch,
                                                                                        quick_calibration):
    from privacy import noise

    seeds = []
    monkeypatch.setattr(noise, "secret_seed", lambda bits=63: seeds.append(0x5EC12E7 + len(seeds)) or seeds[-1])
    _, history = federate(parts, tmp_path)
    assert len(seeds) == 2 * 2 * 2  # rounds x clients x (sampling, noise)
    written = json.loads((tmp_path / "history.json").read_text())
    assert written["privacy"]["mechanism"] == "local-dpsgd"
    assert written["privacy"]["epsilon"] == max(c["epsilon"] for c in written["privacy"]["clients"]) > 0
    assert [c["rounds"] for c in written["privacy"]["clients"]] == [[1, 2], [1, 2]]
    assert all("train_loss" not in r for r in written["rounds"])
    assert not set(seeds) & set(numbers_in(written)) and not set(seeds) & set(numbers_in(
        json.loads((parts / "manifest.json").read_text())))


def test_a_node_restarted_mid_run_fails_the_federation(parts, tmp_path, quick_calibration):
    def restart_partition_1(grid, server_round):
        if server_round == 1:
            grid.contexts[202] = fresh_context(parts, partition_id=1)  # its accountant history is gone

    with pytest.raises(LedgerError, match=r"^round 2: partition 1 reports epsilon .* after 2 round\(s\)"):
        federate(parts, tmp_path, restart_partition_1)
    assert not (tmp_path / "history.json").exists()
