"""central-dp-ftrl (privacy/central_ftrl.py, privacy/mechanisms/central_ftrl.py): the released models
against the noisy prefix sums computed here over two tree epochs, the clip, the dealt schedule and
its one-participation guard, the accounting of several epochs against independent computations,
the scenario rules, the record, and the white-box audit (its likelihood-ratio statistic against the
tree covariance written out, its null and the planted defects it catches).

Driven in-process with crafted replies (as tests/test_central_sampled.py), no Ray."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from attacks.audit import evidence_bound, evidence_ceiling, one_run_fdp_evidence
from benchmark.scenarios import Scenario, ScenarioError
from benchmark.suites import get_suite
from privacy import accounting as acc
from privacy.canary_clients import TreeCanaryClients
from privacy.central_ftrl import TreeFTRL
from privacy.noise import secure_normal
from privacy.plants import PLANTS
from privacy.whitebox import CANARY_NORM_X, canary_coins

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DELTA = 1e-5
ALPHA = 0.05
GLOBAL = {"w": torch.zeros(4, 3), "b": torch.zeros(3), "n": torch.zeros(2, dtype=torch.int64)}
FLOATS = ("w", "b")
D = 15


@pytest.fixture(autouse=True)
def task_identity(flower_task_identity):
    """Every test here sends Flower messages (conftest.flower_task_identity)."""


def nodes_of(n: int) -> dict[int, int]:
    return {p: 1000 + p for p in range(n)}


class FakeGrid:
    def get_node_ids(self):
        return []


def strategy(n=6, k=2, z=0.0, clip=1.0, seed=0, noise_seed=99, **kw) -> TreeFTRL:
    return TreeFTRL(partition_to_node=nodes_of(n), clients_per_round=k, noise_multiplier=z, clipping_norm=clip,
                    delta=DELTA, seed=seed, noise_rng=np.random.default_rng(noise_seed), **kw)


def flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k].numpy() if hasattr(arrays[k], "numpy") else arrays[k],
                                      dtype=np.float64).ravel() for k in FLOATS])


def reply(msg: Message, delta: np.ndarray) -> Message:
    """The client's reply: the model it received plus ``delta`` (flattened over the float arrays)."""
    received = msg.content["arrays"]
    out, offset = {}, 0
    for k in GLOBAL:
        a = received[k].numpy()
        if a.dtype.kind == "f":
            out[k] = torch.from_numpy((a + delta[offset: offset + a.size].reshape(a.shape)).astype(a.dtype))
            offset += a.size
        else:
            out[k] = torch.from_numpy(a.copy())
    metrics = {"num-examples": 16, "dp-weight": 1.0}
    return Message(RecordDict({"arrays": ArrayRecord(out), "metrics": MetricRecord(metrics)}), reply_to=msg)


def run_rounds(s: TreeFTRL, rounds: int, update_of, arrays=None):
    """Run ``rounds`` rounds; ``update_of(round, partition)`` is the flat update a client sends.
    Returns the global models before round 1 and after each round (flat float64)."""
    arrays = ArrayRecord(GLOBAL) if arrays is None else arrays
    models = [flat(arrays)]
    by_node = {v: p for p, v in s.partition_to_node.items()}
    for rnd in range(1, rounds + 1):
        msgs = list(s.configure_train(rnd, arrays, ConfigRecord(), FakeGrid()))
        arrays, _ = s.aggregate_train(rnd, [reply(m, update_of(rnd, by_node[m.metadata.dst_node_id])) for m in msgs])
        models.append(flat(arrays))
    return models, arrays


def lowbit_chain(t: int) -> list[int]:
    """The steps whose closing nodes cover [1, t]: t, then t without its lowest set bit, ... (> 0)."""
    out = []
    while t:
        out.append(t)
        t &= t - 1
    return out


# ------------------------------------------------------------------------------ the release
def test_released_models_are_the_epoch_start_plus_the_noisy_prefix_sum_over_k_across_a_restart():
    """Two epochs of T = 3 rounds (N = 6, k = 2): every released model equals, computed here,
    theta_(epoch start) + (sum of the clipped updates of steps 1..t + the noise of the nodes covering
    [1, t]) / k, the node noises drawn one per step in order from the seeded generator, and the
    second epoch starting from the model released at round 3 with fresh nodes."""
    n, k, z, clip = 6, 2, 0.7, 1.0
    rng = np.random.default_rng(5)
    updates = {(r, p): rng.normal(0, 0.6, D) * (3.0 if (r + p) % 4 == 0 else 1.0) for r in range(1, 7)
               for p in range(n)}
    s = strategy(n=n, k=k, z=z, clip=clip, noise_seed=42)
    models, arrays = run_rounds(s, 6, lambda r, p: updates[(r, p)])
    ref = np.random.default_rng(42)
    for rnd in range(1, 7):
        t = (rnd - 1) % 3 + 1
        if t == 1:
            start, node_noise, sums = models[rnd - 1], {}, []
        node_noise[t] = secure_normal(ref, z * clip, (D,))
        # What the server sees: the reply in float32 minus the model it was sent.
        seen = [(models[rnd - 1] + updates[(rnd, p)]).astype(np.float32) - models[rnd - 1] for p in s.sampled[rnd]]
        clipped = [u * min(1.0, clip / np.linalg.norm(u)) for u in seen]
        sums.append(np.sum(clipped, axis=0))
        want = start + (np.sum(sums, axis=0) + sum(node_noise[u] for u in lowbit_chain(t))) / k
        np.testing.assert_allclose(models[rnd], want.astype(np.float32), rtol=1e-6, atol=1e-6)
        assert s.releases[rnd].noise_std == pytest.approx(z * clip * math.sqrt(bin(t).count("1")) / k)
    assert any(np.linalg.norm(u) > clip for u in updates.values())   # the clip was exercised
    assert np.array_equal(arrays["n"].numpy(), GLOBAL["n"].numpy())  # integer buffers kept
    assert s.privacy_spent().epoch_steps == (3, 3) and s.privacy_spent().num_releases == 6


def test_an_update_beyond_the_clip_moves_the_model_by_exactly_c_over_k():
    n, k, clip = 4, 2, 0.5
    small = np.full(D, 0.01)
    huge = np.full(D, 100.0)   # norm 100 sqrt(15), far beyond C

    def release(first_huge: bool, plant=None):
        s = strategy(n=n, k=k, clip=clip, plant=plant)
        models, _ = run_rounds(s, 1, lambda r, p: huge if first_huge and p == s.sampled[1][0] else small)
        return models[1]

    moved = release(True) - release(False)
    assert np.linalg.norm(moved) == pytest.approx((clip - np.linalg.norm(small)) / k, rel=1e-5)
    # Fixed denominator k, equal weights: two small updates move the model by their sum over k.
    np.testing.assert_allclose(release(False), 2 * small / k, rtol=1e-6)
    # A planted clip-off lets the huge update through.
    assert np.linalg.norm(release(True, PLANTS["clip-off"])) > 100


def test_a_round_with_a_missing_reply_still_releases_its_tree_step():
    s = strategy(n=4, k=2, z=1.0)
    msgs = list(s.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord(), FakeGrid()))
    arrays, metrics = s.aggregate_train(1, [reply(msgs[0], np.zeros(D))])
    assert arrays is not None and s.releases[1].aggregated == 1 and metrics["noise_std"] == pytest.approx(0.5)
    msgs = list(s.configure_train(2, arrays, ConfigRecord(), FakeGrid()))
    s.aggregate_train(2, [])
    assert s.privacy_spent().epoch_steps == (2,)


# ------------------------------------------------------------------------------ the schedule
def test_each_epoch_deals_every_client_once_from_the_run_seed():
    n, k = 12, 3
    s = strategy(n=n, k=k)
    run_rounds(s, 3 * (n // k), lambda r, p: np.zeros(D))
    epochs = [[p for r in range(1 + e * 4, 5 + e * 4) for p in s.sampled[r]] for e in range(3)]
    for dealt in epochs:
        assert sorted(dealt) == list(range(n))                    # everyone exactly once
    assert epochs[0] != epochs[1] != epochs[2]                     # a fresh permutation each epoch
    assert all(len(s.sampled[r]) == k for r in s.sampled)
    again = strategy(n=n, k=k, noise_seed=1)
    run_rounds(again, 4, lambda r, p: np.zeros(D))
    assert [again.sampled[r] for r in range(1, 5)] == [s.sampled[r] for r in range(1, 5)]  # public, seeded
    other = strategy(n=n, k=k, seed=1)
    run_rounds(other, 4, lambda r, p: np.zeros(D))
    assert [other.sampled[r] for r in range(1, 5)] != [s.sampled[r] for r in range(1, 5)]


def test_a_second_participation_in_an_epoch_raises():
    s = strategy(n=6, k=2)
    s.epoch_order = lambda epoch: [0, 1, 2, 0, 4, 5]   # a broken deal: client 0 twice in epoch 0
    arrays = ArrayRecord(GLOBAL)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), FakeGrid()))
    arrays, _ = s.aggregate_train(1, [reply(m, np.zeros(D)) for m in msgs])
    with pytest.raises(ValueError, match="client 0 already took part in step 1 of this tree epoch"):
        s.configure_train(2, arrays, ConfigRecord(), FakeGrid())
    # A round that is not the next step of a started epoch is refused too.
    with pytest.raises(ValueError, match="never started"):
        strategy(n=6, k=2).configure_train(2, arrays, ConfigRecord(), FakeGrid())
    with pytest.raises(ValueError, match="multiple of clients_per_round"):
        strategy(n=5, k=2)
    with pytest.raises(ValueError, match="samples nobody"):
        strategy(plant=PLANTS["rate-x4"])


# ------------------------------------------------------------------------------ accounting
def _improved_conversion(rdp_of_order, delta: float) -> float:
    """(epsilon, delta) from RDP (Balle et al. 2020, Thm 21), minimised over a dense grid of orders."""
    orders = np.concatenate([np.linspace(1.02, 20, 4000), np.linspace(20, 2000, 4000)])
    return float(min(rdp_of_order(a) + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
                     for a in orders))


@pytest.mark.parametrize("sigma, epoch_steps", [(3.0, (10, 10)), (1.5, (10,) * 5), (2.0, (10, 10, 3)),
                                                (5.0, (100,) * 4), (0.9, (1,) * 7)])
def test_several_epochs_are_the_composition_of_their_trees(sigma, epoch_steps):
    """E epochs, a client once in each: RDP a sum_e depth(T_e) / (2 sigma^2), from first principles
    (depth = bit length of T_e) and through dp_accounting's plain Gaussian at the equivalent noise
    sigma / sqrt(sum depth); the one-tree function at E = 1 and the E-fold form agree."""
    import dp_accounting

    total_depth = sum(int(t).bit_length() for t in epoch_steps)
    got = acc.ftrl_epsilon(noise_multiplier=sigma, epoch_steps=epoch_steps, delta=DELTA)
    ours = _improved_conversion(lambda a: a * total_depth / (2 * sigma ** 2), DELTA)
    assert got == pytest.approx(ours, rel=0.01) and got >= ours * (1 - 1e-9)
    gauss = dp_accounting.rdp.RdpAccountant()
    gauss.compose(dp_accounting.GaussianDpEvent(sigma / math.sqrt(total_depth)))
    assert got == pytest.approx(gauss.get_epsilon(DELTA), rel=1e-9)
    if len(set(epoch_steps)) == 1:
        assert got == acc.ftrl_tree_epsilon(noise_multiplier=sigma, steps=epoch_steps[0], delta=DELTA,
                                            epochs=len(epoch_steps))
    assert acc.ftrl_epsilon(noise_multiplier=sigma, epoch_steps=epoch_steps[:1], delta=DELTA) == \
        acc.ftrl_tree_epsilon(noise_multiplier=sigma, steps=epoch_steps[0], delta=DELTA)


def test_one_event_with_several_trees_is_one_epoch_and_would_under_count():
    """dp_accounting's SingleEpochTreeAggregationDpEvent with a list of step counts is ONE epoch in
    which each record occurs in at most one tree: it charges only the deepest tree. Two epochs in
    which every client takes part cost more, the composed figure."""
    import dp_accounting

    one = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL)
    one.compose(dp_accounting.SingleEpochTreeAggregationDpEvent(3.0, step_counts=[10, 10]))
    assert one.get_epsilon(DELTA) == pytest.approx(acc.ftrl_tree_epsilon(noise_multiplier=3.0, steps=10, delta=DELTA))
    assert acc.ftrl_epsilon(noise_multiplier=3.0, epoch_steps=(10, 10), delta=DELTA) > 1.3 * one.get_epsilon(DELTA)


@pytest.mark.parametrize("target, epoch_steps", [(4.0, (10, 10)), (1.0, (10,) * 5), (10.0, (10, 10, 3))])
def test_noise_for_a_target_over_epochs_is_the_smallest_to_the_tolerance(target, epoch_steps):
    sigma = acc.ftrl_noise(target_epsilon=target, epoch_steps=epoch_steps, delta=DELTA)
    assert acc.ftrl_epsilon(noise_multiplier=sigma, epoch_steps=epoch_steps, delta=DELTA) <= target
    assert acc.ftrl_epsilon(noise_multiplier=sigma * (1 - 1e-3), epoch_steps=epoch_steps, delta=DELTA) > target


def test_epoch_schedules_and_bad_values():
    assert acc.ftrl_epoch_steps(20, 10) == (10, 10) and acc.ftrl_epoch_steps(25, 10) == (10, 10, 5)
    assert acc.ftrl_epoch_steps(3, 10) == (3,)
    for kwargs, match in [(dict(epoch_steps=()), "at least one epoch"), (dict(epoch_steps=(10, 0)), "steps must be"),
                          (dict(epoch_steps=(2.5,)), "steps must be"),
                          (dict(noise_multiplier=0.0), "noise multiplier")]:
        with pytest.raises(acc.AccountingError, match=match) as e:
            acc.ftrl_epsilon(**(dict(noise_multiplier=1.0, epoch_steps=(10,), delta=DELTA) | kwargs))
        assert "\n" not in str(e.value)
    with pytest.raises(acc.AccountingError, match="epochs must be an integer >= 1"):
        acc.ftrl_tree_epsilon(noise_multiplier=1.0, steps=10, delta=DELTA, epochs=0)
    with pytest.raises(acc.AccountingError, match="steps/rounds must be >= 1|steps must be"):
        acc.ftrl_epoch_steps(0, 10)


FTRL = ["account", "--level", "client", "--mechanism", "dp-ftrl", "--steps", "10", "--delta", "1e-5"]


def test_bench_account_composes_epochs(capsys):
    from benchmark.cli import main

    assert main(FTRL + ["--epochs", "2", "--noise-multiplier", "3.0"]) == 0
    out = capsys.readouterr().out
    assert float(re.search(r"epsilon = ([0-9.]+)", out).group(1)) == pytest.approx(
        acc.ftrl_epsilon(noise_multiplier=3.0, epoch_steps=(10, 10), delta=DELTA), rel=1e-5)
    assert "2 trees (epochs) composed" in out
    assert main(FTRL + ["--epochs", "2", "--epsilon", "4"]) == 0
    sigma = float(re.search(r"noise_multiplier = ([0-9.]+)", capsys.readouterr().out).group(1))
    assert sigma == pytest.approx(acc.ftrl_noise(target_epsilon=4.0, epoch_steps=(10, 10), delta=DELTA), rel=1e-5)
    assert main(FTRL + ["--noise-multiplier", "3.0"]) == 0
    assert "in one tree" in capsys.readouterr().out
    for argv, message in [(FTRL + ["--epochs", "0", "--epsilon", "4"], "epochs must be an integer >= 1"),
                          (["account", "--level", "client", "--population", "100", "--steps", "10", "--delta", "1e-5",
                            "--epsilon", "4", "--epochs", "2"], "--epochs counts dp-ftrl's tree epochs")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


# ------------------------------------------------------------------------------ the scenario
def _scenario(**kw) -> Scenario:
    base = dict(name="f", dp_mode="central-dp-ftrl", target_epsilon=4.0, delta=1e-3, num_clients=8,
                clients_per_round=2, rounds=6)
    return Scenario(**(base | kw))


@pytest.mark.parametrize("fields, match", [
    (dict(clients_per_round=3), r"num_clients \(8\) must be a multiple of clients_per_round \(3\)"),
    (dict(min_clients_per_round=1), "takes no min_clients_per_round"),
    (dict(central_clipping="client"), "clips on the server"),
    (dict(plant="rate-x4", client_canaries=0), "samples nobody"),
    (dict(plant="noise-y"), "unknown plant"),
    (dict(client_sample_rate=0.25), "need dp_mode 'central-dp-sampled'"),
    (dict(adaptive_clipping=True), "need dp_mode 'central-dp-sampled'"),
    (dict(client_canaries=10), "client_canaries are audited in the attack stage"),
    (dict(delta=0.2), "must be below 1/num_clients"),
    (dict(accountant="prv"), "accountant 'prv' not available"),
])
def test_scenario_rules_are_one_line(fields, match):
    with pytest.raises(ScenarioError, match=match) as e:
        _scenario(**fields)
    assert "\n" not in str(e.value)


def test_the_mechanism_records_its_schedule_relations_and_epsilons():
    from privacy.mechanisms import get_mechanism

    mech, s = get_mechanism("central-dp-ftrl"), _scenario(rounds=10)
    assert mech.min_replies(s) == 0 == s.min_replies and not mech.reports_timing
    assert mech.weight_key == "dp-weight" and mech.expected_weight(40) == 1.0 and mech.clip(None) == 0.5
    assert mech.epsilon_relation.startswith("replace-with-special one client")
    side = mech.server_side(s, None, partition_to_node=nodes_of(8), num_images={}, seed=3)
    rec = side.record()
    assert rec["mechanism"] == "central-dp-ftrl" and rec["releases"] == 0 and rec["epsilon"] == 0.0
    assert rec["accountant"] == acc.FTRL_ACCOUNTANT and rec["rounds_per_epoch"] == 4
    assert rec["planned_epoch_steps"] == [4, 4, 2] and rec["sample_rate"] == 0.25
    assert rec["participation"].startswith("each client at most once per epoch of 4 rounds")
    assert "tree restarted each epoch" in rec["participation"]
    z = rec["noise_multiplier"]
    assert z == acc.ftrl_noise(target_epsilon=4.0, epoch_steps=(4, 4, 2), delta=1e-3)
    columns = mech.columns(s, rec | {"epsilon": 4.0})
    units = {g.unit: g for g in mech.guarantees(s, columns)}
    assert units["client"].epsilon == 4.0 and "replace-with-special" in units["client"].relation
    assert units["image"].epsilon == acc.ftrl_epsilon(noise_multiplier=z / 2, epoch_steps=(4, 4, 2), delta=1e-3)
    assert "up to 2C" in units["image"].relation and "add/remove one client" not in {g.relation for g in units.values()}
    assert mech.audit_claims(s, columns) == {"client": 4.0, "image": units["image"].epsilon}
    assert mech.attacker_view(s, columns) == {"clip": None, "noise_multiplier": 0.0}


def test_cross_device_suite_has_the_ftrl_rows():
    suite = {s.name: s for s in get_suite("cross-device", "cpu")}
    fixed = suite["cross-device-iid-fixed-eps4"]
    for eps in (10.0, 4.0, 1.0):
        row = suite[f"cross-device-iid-ftrl-eps{eps:g}"]
        assert (row.dp_mode, row.target_epsilon, row.num_clients, row.clients_per_round) == \
            ("central-dp-ftrl", eps, 200, 20)
        assert (row.client_canaries, row.max_grad_norm, row.rounds, row.attacks) == \
            (fixed.client_canaries, fixed.max_grad_norm, fixed.rounds, fixed.attacks)


def test_audit_power_has_the_ftrl_rows_with_every_plant_but_the_samplers():
    """The audit audited for DP-FTRL: the correct row and one row per plant that applies (a rate plant
    is refused: the mechanism samples nobody), in the shape the plants are checked against below
    (N = 20, k = 2: two tree epochs of 10 steps over 20 rounds)."""
    from privacy.mechanisms import get_mechanism

    suite = {s.name: s for s in get_suite("audit-power", "cpu") if s.dp_mode == "central-dp-ftrl"}
    assert set(suite) == {"audit-power-ftrl-eps4"} | {f"audit-power-ftrl-eps4-{p}" for p in
                                                      ("noise-off", "noise-x0.4", "clip-off")}
    assert {p.name for p in PLANTS.values() if p.rate_factor == 1.0} == {"noise-off", "noise-x0.4", "clip-off"}
    for s in suite.values():
        mech = get_mechanism(s.dp_mode)
        assert mech.validate(s) is None and mech.epoch_steps(s) == (10, 10)
        assert (s.target_epsilon, s.client_canaries, s.num_clients, s.clients_per_round) == (4.0, 10_000, 20, 2)


# ------------------------------------------------------------------------------ the audit
def test_the_canary_statistic_is_the_likelihood_ratio_of_the_prefix_sums_under_the_tree_covariance():
    """Written out here: for T steps, Cov(Y_s, Y_t) = z^2 x (nodes shared by the covers of [1, s]
    and [1, t]); a canary at step 1 adds 1 to every prefix sum; the ratio mu' S^-1 Y - mu' S^-1 mu / 2
    equals the statistic TreeCanaryClients accumulates from the same releases."""
    T, z, m = 7, 1.3, 5
    covers = [{(t - (t & -t) + 1, t) for t in lowbit_chain(u)} for u in range(1, T + 1)]
    cov = z ** 2 * np.array([[len(a & b) for b in covers] for a in covers], dtype=np.float64)
    rng = np.random.default_rng(0)
    Y = rng.normal(0, 3, (T, m))
    c = TreeCanaryClients(np.ones(m, dtype=bool), noise_multiplier=z)
    for t in range(1, T + 1):
        c.release(Y[t - 1] * 0.5, 0.5, step=t)   # released in the scale of a sum with C = 0.5
    mu = np.ones(T)
    want = mu @ np.linalg.solve(cov, Y) - mu @ np.linalg.solve(cov, mu) / 2
    np.testing.assert_allclose(c.scores, want, rtol=1e-9)
    assert c.nodes == 3 == T.bit_length() and c.releases == T
    with pytest.raises(ValueError, match="expected step 8"):
        c.release(np.zeros(m), 1.0, step=9)


def run_audited(m=2000, eps=4.0, epochs=2, seed=0, plant=None):
    """The real strategy with m canary clients, N = 20, k = 2 (T = 10), ``epochs`` epochs at the
    noise for ``eps``; returns (claimed epsilon, canaries)."""
    steps = (10,) * epochs
    z = acc.ftrl_noise(target_epsilon=eps, epoch_steps=steps, delta=DELTA)
    claim = acc.ftrl_epsilon(noise_multiplier=z, epoch_steps=steps, delta=DELTA)
    c = TreeCanaryClients(canary_coins(m, seed), noise_multiplier=z)
    s = strategy(n=20, k=2, z=z, clip=0.5, noise_seed=seed + 1, canaries=c,
                 plant=None if plant is None else PLANTS[plant])
    run_rounds(s, 10 * epochs, lambda r, p: np.full(D, 0.01))
    return claim, c


def test_canaries_take_part_once_per_epoch_clipped_to_c_with_the_models_noise():
    _, off = run_audited(m=400, plant="noise-off")
    rec = off.record()
    assert rec["steps"] == 8 and rec["rounds"] == 20 and rec["sample_rate"] == 1.0 and rec["guess_sides"] == "both"
    # No noise: an included canary's node values are exactly 1 (C / C), an excluded one's 0.
    z = off.noise_multiplier
    np.testing.assert_allclose(off.scores[off.included], 8 * 0.5 / z ** 2, rtol=1e-9)
    np.testing.assert_allclose(off.scores[~off.included], -8 * 0.5 / z ** 2, rtol=1e-9)
    _, clip_off = run_audited(m=400, plant="clip-off")
    assert clip_off.scores[clip_off.included].min() > 8 * (CANARY_NORM_X / 2) / clip_off.noise_multiplier ** 2
    # With noise: the excluded canaries' ratio is N(-n / (2 z^2), n / z^2), n = 8 nodes.
    _, c = run_audited(m=4000)
    out, n, z = c.scores[~c.included], 8, c.noise_multiplier
    assert out.std() == pytest.approx(math.sqrt(n) / z, rel=0.06)
    assert abs(out.mean() + n / (2 * z ** 2)) < 4 * math.sqrt(n) / z / math.sqrt(len(out))
    _, weak = run_audited(m=4000, plant="noise-x0.4")
    assert weak.scores[~weak.included].std() == pytest.approx(0.4 * math.sqrt(n) / z, rel=0.06)


@pytest.mark.parametrize("plant", [None, "noise-off", "clip-off", "noise-x0.4"])
def test_the_f_dp_bound_passes_the_mechanism_and_catches_each_plant(plant):
    """The canaries' f-DP one-run bound (shape: sample rate 1, 8 Gaussian node releases: 2 epochs of
    depth 4) with two-sided guesses, at epsilon 4: below the claim with a ceiling above it; each
    planted defect exceeds it."""
    claim, c = run_audited(m=10_000 if plant == "noise-x0.4" else 2000, seed=3, plant=plant)
    ev = one_run_fdp_evidence(c.scores, c.included, sample_rate=1.0, steps=c.nodes, sides="both", seed=0)
    bound = evidence_bound(ev, delta=DELTA, alpha=ALPHA / 2)
    if plant is None:
        assert bound <= claim < evidence_ceiling(ev, delta=DELTA, alpha=ALPHA / 2)
    else:
        assert bound > claim, (plant, bound, claim)


def test_mechanism_run_records_the_canaries_and_the_audit_reads_them():
    """server_side behind the reply screening, three rounds: the record carries the schedule, the
    spent epsilon and the canaries; audit_canaries hands them to the audit as a client-level test
    with the f-DP shape; the attack stage's audit gives a verdict against the client claim."""
    from attacks.evaluate import audit_record, audit_tests
    from benchmark.federation.screening import ScreenedAggregation
    from privacy.mechanisms import get_mechanism

    s = _scenario(rounds=6, client_canaries=200, attacks=("mia-loss",), max_grad_norm=0.5)
    mech = get_mechanism(s.dp_mode)
    side = mech.server_side(s, None, partition_to_node=nodes_of(8), num_images={p: 16 for p in range(8)}, seed=11)
    screened = ScreenedAggregation(side.strategy, min_replies=s.min_replies, weight_key=mech.weight_key,
                                   expected_weights={v: 1.0 for v in nodes_of(8).values()})
    arrays = ArrayRecord(GLOBAL)
    for rnd in range(1, 7):
        msgs = list(screened.configure_train(rnd, arrays, ConfigRecord(), FakeGrid()))
        arrays, _ = screened.aggregate_train(rnd, [reply(m, np.full(D, 0.01)) for m in msgs[1:]])  # one drops out
    rec = side.record()
    assert rec["releases"] == 6 and rec["epoch_steps"] == [4, 2]
    assert rec["epsilon"] == pytest.approx(acc.ftrl_epsilon(noise_multiplier=rec["noise_multiplier"],
                                                            epoch_steps=(4, 2), delta=1e-3))
    assert side.spent() == rec["epsilon"] and sorted(p for r in (1, 2, 3, 4) for p in side.sampled[r]) == list(range(8))
    wb = rec["whitebox"]
    assert wb["m"] == 200 and wb["steps"] == 3 + 2 and wb["rounds"] == 6 and wb["unit"] == "client"
    (entry,) = mech.audit_canaries(s, rec, 11)
    assert entry.unit == "client" and entry.sides == "both" and entry.shape == {"sample_rate": 1.0, "steps": 5}
    assert np.array_equal(entry.included, canary_coins(200, 11)) and entry.audit_scores is None
    tested = [(entry.name, "gradient-canary", entry.scores, entry.included, entry.unit),
              (entry.name, "gradient-canary-fdp", entry.scores, entry.included, entry.unit)]
    tests = audit_tests(tested, delta=s.delta, seed=11, shapes={entry.name: entry.shape},
                        sides={entry.name: entry.sides})
    claims = mech.audit_claims(s, mech.columns(s, rec))
    audit = audit_record(tests, delta=s.delta, claimed=rec["epsilon"], claims=claims)
    assert audit["audit_unit"] == "client" and audit["epsilon_audited"] == rec["epsilon"]
    assert audit["audit_verdict"] in ("passed", "inconclusive") and not audit["audit_failed"]


@pytest.mark.slow  # ~5 s: exports the partitions and builds the model
def test_run_federation_dispatches_the_ftrl_mode_and_records_its_privacy(tmp_path, monkeypatch):
    """run_federation with a grid that answers in-process (no Ray): the mode's strategy deals the
    clients, history.json and the runner's columns carry the tree accounting and the canaries."""
    from benchmark.federation import server_app
    from benchmark.federation.partition_files import export_partitions
    from benchmark.runner import privacy_metrics

    sc = Scenario(name="ft", num_clients=8, clients_per_round=4, rounds=3, dp_mode="central-dp-ftrl",
                  target_epsilon=10.0, delta=1e-3, max_train_images=64, client_canaries=100, attacks=("mia-loss",))
    export_partitions(sc, 0, tmp_path / "parts")
    nodes = nodes_of(sc.num_clients)
    monkeypatch.setattr(server_app, "discover_partitions", lambda grid, n, timeout: nodes)

    class Grid:
        def send_and_receive(self, messages, timeout):
            out = []
            for m in messages:
                arrays = {k: torch.from_numpy(v.numpy()) + (0.01 if v.numpy().dtype.kind == "f" else 0)
                          for k, v in m.content["arrays"].items()}
                metrics = {"num-examples": 16, "dp-weight": 1.0}
                out.append(Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)}),
                                   reply_to=m))
            return out

    history = server_app.run_federation(Grid(), {"scenario": sc.to_json(), "seed": 0, "out-dir": str(tmp_path / "out"),
                                                 "partition-dir": str(tmp_path / "parts")})
    c = history["privacy"]
    assert c["mechanism"] == "central-dp-ftrl" and c["releases"] == 3 and c["epoch_steps"] == [2, 1]
    assert c["epsilon"] == pytest.approx(acc.ftrl_epsilon(noise_multiplier=c["noise_multiplier"], epoch_steps=(2, 1),
                                                          delta=1e-3))
    dealt = [r["sampled_partitions"] for r in history["rounds"]]
    assert sorted(dealt[0] + dealt[1]) == list(range(8)) and len(dealt[2]) == 4
    assert privacy_metrics(sc, history)["accountant"] == acc.FTRL_ACCOUNTANT
    assert c["whitebox"]["steps"] == 2 + 1 and c["whitebox"]["m"] == 100
    assert (tmp_path / "out" / "global_model.pt").exists()
