"""Faulty and malicious clients in a round: the server's reply screening (ScreenedAggregation),
driven with crafted replies to the real strategies (SeededFedAvg, Flower's central-DP wrapper).

A client that raises arrives as an error reply; one that hangs past the round timeout arrives as
no reply at all (Flower's ``send_and_receive(timeout=...)`` returns what came in time).
"""

import dataclasses
import types

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from benchmark.federation.errors import RoundFailedError
from benchmark.federation.sampling import SeededFedAvg
from benchmark.federation.screening import ScreenedAggregation
from benchmark.scenarios import Scenario, ScenarioError

NODES = {0: 101, 1: 202, 2: 303}
GLOBAL = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}


@pytest.fixture(autouse=True)
def task_identity(flower_task_identity):
    """Every test here sends Flower messages (conftest.flower_task_identity)."""


class FakeGrid:
    def get_node_ids(self):
        return list(NODES.values())


def screened(min_replies=2, central=False, side="server", clip=1.0, sigma=1e-6):
    from privacy.central import wrap_central_dp
    from privacy.mechanisms.base import UNIFORM_WEIGHT_KEY

    key = UNIFORM_WEIGHT_KEY if central else "num-examples"
    inner = base = SeededFedAvg(partition_to_node=NODES, clients_per_round=3, seed=0, min_train_nodes=3,
                                weighted_by_key=key)
    if central:
        inner = wrap_central_dp(base, noise_multiplier=sigma, clipping_norm=clip, clients_per_round=3,
                                num_clients=3, delta=1e-3, side=side)
    return ScreenedAggregation(inner, min_replies=min_replies, weight_key=key,
                               expected_weights={n: 1.0 if central else 10.0 for n in NODES.values()},
                               node_names={n: f"partition {p}" for p, n in NODES.items()})


def start_round(strategy, arrays=None):
    msgs = list(strategy.configure_train(1, ArrayRecord(arrays or GLOBAL), ConfigRecord(), FakeGrid()))
    return {m.metadata.dst_node_id: m for m in msgs}


def reply(msg, arrays=None, **metrics):
    arrays = arrays if arrays is not None else {k: torch.ones_like(v) for k, v in GLOBAL.items()}
    metrics = {"num-examples": 10, "dp-weight": 1.0, "train_loss": 0.5} | metrics
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)}), reply_to=msg)


def honest(msg, value=1.0):
    return reply(msg, {k: torch.full_like(v, value) for k, v in GLOBAL.items()})


def bad_arrays(kind):
    good = {k: torch.ones_like(v) for k, v in GLOBAL.items()}
    return {
        "nan": good | {"w": torch.full((4, 3), float("nan"))},
        "inf": good | {"b": torch.tensor([1.0, float("inf"), 1.0])},
        "shape": good | {"w": torch.ones(5, 3)},
        "dtype": good | {"w": torch.ones(4, 3, dtype=torch.float64)},
        "extra-key": good | {"images": torch.ones(2, 1, 28, 28)},
        "missing-key": {"w": good["w"]},
    }[kind]


@pytest.mark.parametrize("kind", ["nan", "inf", "shape", "dtype", "extra-key", "missing-key"])
def test_invalid_update_is_rejected_counted_and_never_averaged(kind):
    s = screened()
    msgs = start_round(s)
    replies = [honest(msgs[101], 1.0), honest(msgs[202], 3.0), reply(msgs[303], bad_arrays(kind))]
    agg, _ = s.aggregate_train(1, replies)
    for k in GLOBAL:
        # The mean of the two valid updates only.
        assert torch.equal(torch.from_numpy(agg[k].numpy()), torch.full_like(GLOBAL[k], 2.0))
    stats = s.rounds[1]
    assert (stats["sampled"], stats["aggregated"], stats["rejected_invalid"]) == (3, 2, 1)
    assert stats["dropped_error"] == stats["dropped_timeout"] == 0 and "partition 2" in stats["problems"]


def test_aggregation_does_not_depend_on_the_order_replies_arrive_in():
    """Float sums depend on their order: FedAvg over replies in arrival order made two runs of the
    same non-DP scenario and seed differ (whichever client answered first). The screening hands the
    replies on in the order the round's messages were sent."""
    values = {101: 1e8, 202: 1.0, 303: -1e8}  # (1e8 + 1) - 1e8 != (1e8 - 1e8) + 1 in float32
    results = []
    for order in ([101, 202, 303], [303, 101, 202], [202, 303, 101]):
        s = screened()
        msgs = start_round(s)
        agg, _ = s.aggregate_train(1, [honest(msgs[n], values[n]) for n in order])
        results.append({k: agg[k].numpy().copy() for k in GLOBAL})
    for other in results[1:]:
        assert all((other[k] == results[0][k]).all() for k in GLOBAL)


@pytest.mark.parametrize("metrics", [{"train_loss": float("nan")}, {"num-examples": -5}, {"num-examples": 0},
                                     {"num-examples": 10**9}])  # a client claiming more images than it holds
def test_invalid_metrics_are_rejected(metrics):
    s = screened()
    msgs = start_round(s)
    s.aggregate_train(1, [honest(msgs[101]), honest(msgs[202]), reply(msgs[303], **metrics)])
    assert s.rounds[1]["rejected_invalid"] == 1 and s.rounds[1]["aggregated"] == 2


def test_client_that_raises_is_dropped_and_counted():
    s = screened()
    msgs = start_round(s)
    failed = Message(Error(code=0, reason="RuntimeError: boom\nTraceback ..."), reply_to=msgs[202])
    agg, metrics = s.aggregate_train(1, [honest(msgs[101]), failed, honest(msgs[303])])
    assert agg is not None and metrics["train_loss"] == 0.5
    assert s.rounds[1]["dropped_error"] == 1 and "boom" in s.rounds[1]["problems"]["partition 1"]


def test_client_past_the_timeout_is_dropped_and_counted():
    s = screened()
    msgs = start_round(s)
    agg, _ = s.aggregate_train(1, [honest(msgs[101]), honest(msgs[303])])  # 202 never answered
    assert agg is not None
    assert s.rounds[1]["dropped_timeout"] == 1 and s.rounds[1]["problems"]["partition 1"].startswith("no reply")


def test_round_fails_cleanly_below_the_minimum():
    s = screened(min_replies=3)
    msgs = start_round(s)
    with pytest.raises(RoundFailedError, match=r"round 1: 2 valid update\(s\) of 3 sampled, minimum 3 "
                                               r"\(errors 0, timeouts 0, invalid 1\)"):
        s.aggregate_train(1, [honest(msgs[101]), honest(msgs[202]), reply(msgs[303], bad_arrays("nan"))])
    assert s.rounds[1]["aggregated"] == 2


def test_reply_from_an_unsampled_or_repeated_node_is_rejected():
    s = screened()
    msgs = start_round(s)
    twice = honest(msgs[101], 100.0)
    s.aggregate_train(1, [honest(msgs[101]), twice, honest(msgs[202]), honest(msgs[303])])
    assert s.rounds[1]["rejected_invalid"] == 1 and s.rounds[1]["aggregated"] == 3


def test_central_dp_screens_before_clipping():
    """Flower 1.42's clipping crashes on a wrong shape and passes NaN on: screening comes first.
    Under central DP every sampled client is needed (the noise is calibrated to their number)."""
    for kind in ("shape", "nan"):
        s = screened(min_replies=3, central=True)
        msgs = start_round(s)
        with pytest.raises(RoundFailedError):
            s.aggregate_train(1, [honest(msgs[101]), honest(msgs[202]), reply(msgs[303], bad_arrays(kind))])
    # A client claiming a larger weight than the others is rejected, not a crash of the run.
    s = screened(min_replies=3, central=True)
    msgs = start_round(s)
    with pytest.raises(RoundFailedError, match="invalid 1"):
        s.aggregate_train(1, [honest(msgs[101]), honest(msgs[202]), reply(msgs[303], **{"dp-weight": 1e6})])
    s = screened(min_replies=3, central=True)
    msgs = start_round(s)
    agg, _ = s.aggregate_train(1, [honest(msgs[n], 0.1) for n in (101, 202, 303)])
    assert agg is not None and s.rounds[1]["aggregated"] == 3


# ------------------------------------------------------------------ clipping that cannot be dodged
# Two arrays of one shape far apart: a reply holding the global model's own values with the keys
# swapped "changes nothing" by name, but Flower's wrapper pairs arrays by position.
TWIN = {"a": torch.zeros(3), "b": torch.full((3,), 100.0)}


def twin_replies(msgs, last):
    small = {k: v + 1e-3 for k, v in TWIN.items()}  # honest: a small change (an all-zero one crashes Flower)
    return [reply(msgs[101], small), reply(msgs[202], small), reply(msgs[303], last)]


def moved(agg):
    return float(torch.cat([torch.from_numpy(agg[k].numpy()) - TWIN[k] for k in TWIN]).norm())


def test_permuted_keys_dodge_flowers_clipping_unless_screened():
    """The attack: the same keys in another order escape the server-side clip (Flower pairs by
    position, FedAvg averages by name), so the aggregate moves by ~100 * sqrt(3) / 3, not <= C / m.
    Screening rejects the reply, naming the order."""
    clip, m = 1.0, 3
    permuted = {"b": TWIN["b"].clone(), "a": TWIN["a"].clone()}
    unscreened = screened(central=True, clip=clip).strategy  # Flower's DP wrapper, no screening
    agg, _ = unscreened.aggregate_train(1, twin_replies(start_round(unscreened, TWIN), permuted))
    assert moved(agg) > 50 * clip / m  # far beyond the promised C / m

    for side in ("server", "client"):
        s = screened(min_replies=3, central=True, side=side, clip=clip)
        msgs = start_round(s, TWIN)
        with pytest.raises(RoundFailedError, match="invalid 1"):  # central DP: Flower needs every sampled client
            s.aggregate_train(1, twin_replies(msgs, permuted))
        assert "another order" in s.rounds[1]["problems"]["partition 2"]
    s = screened()  # plain FedAvg refuses it too
    msgs = start_round(s, TWIN)
    s.aggregate_train(1, twin_replies(msgs, permuted))
    assert s.rounds[1]["rejected_invalid"] == 1 and "position 0: 'b', expected 'a'" in s.rounds[1]["problems"][
        "partition 2"]


def test_client_side_clipping_rejects_an_update_over_the_norm():
    clip = 1.0
    s = screened(min_replies=3, central=True, side="client", clip=clip)
    assert s.max_update_norm == clip
    # Found inside another wrapper too (a strategy of ours around Flower's).
    outer = ScreenedAggregation(types.SimpleNamespace(strategy=s.strategy), min_replies=3, weight_key="dp-weight")
    assert outer.max_update_norm == clip
    msgs = start_round(s, TWIN)
    over = {k: v + 1.01 * clip / 6 ** 0.5 for k, v in TWIN.items()}  # norm 1.01 C, never clipped by the client
    with pytest.raises(RoundFailedError, match="invalid 1"):
        s.aggregate_train(1, twin_replies(msgs, over))
    assert "exceeds the clipping norm 1" in s.rounds[1]["problems"]["partition 2"]
    # Server-side clipping clips the same reply itself: nothing to reject.
    s = screened(min_replies=3, central=True, side="server", clip=clip)
    assert s.max_update_norm is None
    s.aggregate_train(1, twin_replies(start_round(s, TWIN), over))
    assert s.rounds[1]["aggregated"] == 3


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e8])
def test_client_side_clipping_accepts_updates_clipped_by_flowers_mod(scale):
    """A client at the norm (Flower's fixedclipping_mod on float32 weights of norm ~300) is accepted,
    so the tolerance covers an honest client's rounding; the tolerance itself stays ~1e-4 C."""
    from benchmark.federation.screening import update_norm, update_norm_tolerance
    from privacy.central import central_clipping_mod

    clip = 0.5
    gen = torch.Generator().manual_seed(int(scale))
    weights = {"w": torch.randn(200, 300, generator=gen), "b": torch.randn(300, generator=gen)}
    s = screened(min_replies=3, central=True, side="client", clip=clip)
    msgs = start_round(s, weights)
    replies = []
    for node, msg in msgs.items():
        sent = {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in weights.items()}
        replies.append(central_clipping_mod(msg, None, lambda m, c, sent=sent: reply(m, sent)))
    norms = [update_norm(r.content["arrays"], ArrayRecord(weights)) for r in replies]
    assert max(abs(n - clip) for n in norms) < 1e-4 * clip  # at the norm, up to float32 rounding
    assert update_norm_tolerance(clip, ArrayRecord(weights)) < 1e-4 * clip
    agg, _ = s.aggregate_train(1, replies)
    assert agg is not None and s.rounds[1]["aggregated"] == 3


def test_server_side_clipping_bounds_an_over_norm_client_by_clip_over_m():
    """Through the screening: a client whose update is 1e6 C moves the aggregate (two honest clients
    sending back the global model) by at most C / m plus the (tiny) noise."""
    clip, m, sigma = 1.0, 3, 1e-6
    s = screened(min_replies=3, central=True, side="server", clip=clip, sigma=sigma)
    msgs = start_round(s, TWIN)
    idle = {k: v + 1e-7 for k, v in TWIN.items()}
    attack = {k: v + 1e6 for k, v in TWIN.items()}
    agg, _ = s.aggregate_train(1, [reply(msgs[101], idle), reply(msgs[202], idle), reply(msgs[303], attack)])
    noise = 6 * sigma * clip / m * 6 ** 0.5
    assert clip / m * 0.99 <= moved(agg) <= clip / m + noise + 1e-5


def test_scenario_fields_for_faulty_clients():
    s = Scenario(name="f", num_clients=4, clients_per_round=3)
    assert s.min_replies == 3  # default: every sampled client
    assert dataclasses.replace(s, min_clients_per_round=2).min_replies == 2
    # New fields at their defaults leave the hash as it was before they existed.
    assert "min_clients_per_round" not in s.definition() and "round_timeout_s" not in s.definition()
    assert dataclasses.replace(s, round_timeout_s=30.0).hash != s.hash
    with pytest.raises(ScenarioError, match="min_clients_per_round must be in"):
        dataclasses.replace(s, min_clients_per_round=4)
    with pytest.raises(ScenarioError, match="round_timeout_s"):
        dataclasses.replace(s, round_timeout_s=0.0)
    with pytest.raises(ScenarioError, match="central-dp needs min_clients_per_round"):
        Scenario(name="c", num_clients=4, clients_per_round=3, min_clients_per_round=2, dp_mode="central-dp",
                 target_epsilon=4.0, delta=1e-5)


def test_known_hash_is_unchanged():
    """The published smoke hash (runs/ and results/ are named by it) survives the new fields."""
    from benchmark.suites import get_scenario

    assert get_scenario("smoke-iid").hash == KNOWN_SMOKE_IID_HASH


KNOWN_SMOKE_IID_HASH = "0dc7e5b8111c"  # the smoke-iid hash before the faulty-client fields


# ------------------------------------------------------------------ the same, in Flower's simulation
SIM_CODE = """
import json, sys
from benchmark.federation.simulation import simulate
from faulty_client_app import app
simulate(json.loads(sys.argv[1]), num_clients=4, client_app=app)
"""


def simulate_faulty(tmp_path, faulty: str, **fields):
    """Run the real ServerApp with tests/apps/faulty_client_app.py in a subprocess (Ray workers
    import the faulty app by module name, so its folder goes on their PYTHONPATH)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    scenario = Scenario(name="faulty", num_clients=4, clients_per_round=4, rounds=1, max_train_images=32,
                        batch_size=8, num_train_timesteps=50, sample_steps=5, **fields)
    cfg = {"scenario": scenario.to_json(), "seed": 0, "out-dir": str(tmp_path / "out"), "device": "cpu"}
    env = dict(os.environ, FEDDP_FAULTY=faulty, FEDDP_HANG_S="50",
               PYTHONPATH=os.pathsep.join([str(repo), str(repo / "tests" / "apps"), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    res = subprocess.run([sys.executable, "-c", SIM_CODE, json.dumps(cfg)], capture_output=True, text=True,
                         env=env, timeout=600, cwd=repo)
    history = tmp_path / "out" / "history.json"
    return res, json.loads(history.read_text()) if history.exists() else None


@pytest.mark.slow
def test_simulation_drops_a_raising_a_hanging_and_a_nan_client(tmp_path):
    res, history = simulate_faulty(tmp_path, "1:raise,2:hang,3:nan", min_clients_per_round=1,
                                   round_timeout_s=40.0)
    assert res.returncode == 0, res.stderr[-3000:]
    (r1,) = history["rounds"]
    assert (r1["sampled"], r1["aggregated"], r1["dropped_error"], r1["dropped_timeout"],
            r1["rejected_invalid"]) == (4, 1, 1, 1, 1)
    assert r1["problems"]["partition 1"].startswith("client error")
    assert r1["problems"]["partition 2"] == "no reply before the round timeout"
    assert "NaN" in r1["problems"]["partition 3"]


@pytest.mark.slow
def test_simulation_round_fails_cleanly_below_the_minimum(tmp_path):
    res, history = simulate_faulty(tmp_path, "1:shape", min_clients_per_round=4)
    assert res.returncode != 0 and history is None  # nothing written
    assert "RoundFailedError: round 1: 3 valid update(s) of 4 sampled, minimum 4" in res.stderr
