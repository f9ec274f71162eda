"""central-dp-sampled: Poisson client sampling, clipped sum + noise over q N, amplified
accounting cross-checked against a second accountant, adaptive clipping charged at its effective noise,
dropouts that cost nothing; the cross-device suite and ``bench account`` for the mode.

Driven in-process with crafted replies (as tests/test_faulty_clients.py), no Ray."""

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from benchmark.federation.screening import ScreenedAggregation
from benchmark.scenarios import HASH_NEUTRAL_DEFAULTS, Scenario, ScenarioError
from benchmark.suites import get_suite
from privacy.accounting import AccountingError, client_level_noise
from privacy.central_sampled import AdaptiveClipping, PoissonSampledDP
from privacy.accounting import (adaptive_update_noise, client_sampled_epsilon, client_sampled_epsilon_dp_accounting,
                                client_sampled_noise)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N = 10
NODES = {p: 1000 + p for p in range(N)}
GLOBAL = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}


@pytest.fixture(autouse=True)
def task_identity(flower_task_identity):
    """Every test here sends Flower messages (conftest.flower_task_identity)."""


class FakeGrid:
    def get_node_ids(self):
        return list(NODES.values())


def strategy(q=0.5, z=0.0, clip=1.0, seed=0, **kw):
    return PoissonSampledDP(partition_to_node=NODES, sample_rate=q, noise_multiplier=z, clipping_norm=clip,
                            delta=1e-3, sampling_rng=np.random.default_rng(seed), noise_rng=np.random.default_rng(99),
                            **kw)


def reply(msg, arrays):
    metrics = {"num-examples": 16, "dp-weight": 1.0, "train_loss": 0.5}
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)}), reply_to=msg)


def full(value):
    return {k: torch.full_like(v, float(value)) for k, v in GLOBAL.items()}


def flat(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([arrays[k].numpy().ravel() for k in GLOBAL])


def start_round(s, rnd=1):
    return {m.metadata.dst_node_id: m for m in s.configure_train(rnd, ArrayRecord(GLOBAL), ConfigRecord(), FakeGrid())}


# ------------------------------------------------------------------------------------ accounting
@pytest.mark.parametrize("sigma, q, rounds", [(1.0, 0.1, 10), (0.8, 0.05, 100), (1.5, 0.2, 50), (2.0, 0.01, 1000)])
def test_sampled_epsilon_matches_dp_accounting_within_1pct(sigma, q, rounds):
    ours = client_sampled_epsilon(noise_multiplier=sigma, sample_rate=q, rounds=rounds, delta=1e-5)
    google = client_sampled_epsilon_dp_accounting(noise_multiplier=sigma, sample_rate=q, rounds=rounds, delta=1e-5)
    assert ours == pytest.approx(google, rel=0.01)
    # Amplification is real: the same noise without sampling (q = 1) costs much more.
    assert ours < 0.7 * client_sampled_epsilon(noise_multiplier=sigma, sample_rate=1.0, rounds=rounds, delta=1e-5)


@pytest.mark.parametrize("eps", [1.0, 4.0, 10.0])
def test_sampled_noise_is_below_the_no_amplification_noise(eps):
    # The cross-device population: 200 clients, 20 expected per round, 5 rounds.
    sampled = client_sampled_noise(target_epsilon=eps, sample_rate=0.1, rounds=5, delta=1e-5)
    fixed = client_level_noise(target_epsilon=eps, rounds=5, delta=1e-5, num_clients=200)
    assert sampled < fixed
    # Calibrated, and (nearly) the smallest: a bit less noise overshoots the target (Google's accountant).
    got = client_sampled_epsilon_dp_accounting(noise_multiplier=sampled, sample_rate=0.1, rounds=5, delta=1e-5)
    assert eps * 0.99 <= got <= eps * 1.01
    assert client_sampled_epsilon_dp_accounting(noise_multiplier=0.97 * sampled, sample_rate=0.1, rounds=5,
                                                delta=1e-5) > eps


def test_adaptive_clipping_noise_composes_to_the_accounted_multiplier():
    import dp_accounting

    z, sigma_b = 1.2, 1.0
    z_update = adaptive_update_noise(z, sigma_b)
    assert z_update > z
    # The update (sensitivity 1, noise z_update) and the centred count (sensitivity 1/2, noise sigma_b:
    # multiplier 2 sigma_b) compose, in RDP, to one Gaussian of multiplier z (Google's accountant).
    two = dp_accounting.rdp.RdpAccountant()
    two.compose(dp_accounting.GaussianDpEvent(z_update))
    two.compose(dp_accounting.GaussianDpEvent(2 * sigma_b))
    one = dp_accounting.rdp.RdpAccountant()
    one.compose(dp_accounting.GaussianDpEvent(z))
    assert two.get_epsilon(1e-5) == pytest.approx(one.get_epsilon(1e-5), rel=1e-9)
    # Without the correction, charging z would under-count: the update at z plus the count costs more.
    under = dp_accounting.rdp.RdpAccountant()
    under.compose(dp_accounting.GaussianDpEvent(z))
    under.compose(dp_accounting.GaussianDpEvent(2 * sigma_b))
    assert under.get_epsilon(1e-5) > one.get_epsilon(1e-5) * 1.05
    with pytest.raises(AccountingError, match="sigma_b > z/2"):
        adaptive_update_noise(2.0, 1.0)


# ------------------------------------------------------------------------------------ the strategy
def test_poisson_sample_rate_and_secret_default_generator():
    s = strategy(q=0.3)
    sizes = [len(start_round(s, r)) for r in range(1, 201)]
    assert abs(np.mean(sizes) / N - 0.3) < 0.03
    assert len(set(sizes)) > 3 and 0 in sizes  # the count varies round to round, down to nobody
    # Default generators are seeded from the OS, not from anything the run records.
    a, b = (PoissonSampledDP(partition_to_node={p: p for p in range(200)}, sample_rate=0.5, noise_multiplier=1.0,
                             clipping_norm=1.0, delta=1e-3) for _ in range(2))
    grid = type("G", (), {"get_node_ids": lambda self: list(range(200))})()
    pick = [[m.metadata.dst_node_id for m in x.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord(), grid)]
            for x in (a, b)]
    assert pick[0] != pick[1]


def test_update_beyond_the_clip_moves_the_aggregate_by_at_most_c_over_qn():
    q, clip = 0.5, 1.0
    s = strategy(q=q, clip=clip)
    msgs = start_round(s)
    assert len(msgs) >= 2
    nodes = sorted(msgs)
    honest = [reply(msgs[n], full(0.01)) for n in nodes[1:]]
    without = flat(s.aggregate_train(1, honest)[0])
    s2 = strategy(q=q, clip=clip)
    msgs2 = start_round(s2)
    huge = reply(msgs2[nodes[0]], full(100.0))  # norm 100 * sqrt(15), far beyond C
    with_huge = flat(s2.aggregate_train(1, [huge] + [reply(msgs2[n], full(0.01)) for n in nodes[1:]])[0])
    moved = np.linalg.norm(with_huge - without)
    assert moved <= clip / (q * N) + 1e-6 and moved > 0.99 * clip / (q * N)
    # Fixed denominator: the honest updates are summed and divided by q N, not by the count.
    assert without == pytest.approx(np.full(15, 0.01 * len(honest) / (q * N)))


def test_dropout_leaves_the_round_running_and_the_epsilon_unchanged():
    z = 1.0
    runs = {}
    for drop in (False, True):
        inner = strategy(q=0.5, z=z)
        s = ScreenedAggregation(inner, min_replies=0, weight_key="dp-weight",
                                expected_weights={n: 1.0 for n in NODES.values()})
        for rnd in (1, 2, 3):
            msgs = start_round(s, rnd)
            nodes = sorted(msgs)
            replies = [reply(msgs[n], full(0.1)) for n in nodes]
            if drop:  # round 1: one raises, one never answers; round 2: nobody answers
                replies = ([Message(Error(code=0, reason="boom"), reply_to=msgs[nodes[0]])] + replies[2:]
                           if rnd == 1 else [] if rnd == 2 else replies)
            arrays, metrics = s.aggregate_train(rnd, replies)
            assert arrays is not None and metrics["noise_std"] == pytest.approx(z * 1.0 / (0.5 * N))
        runs[drop] = (inner.privacy_spent(), s.rounds)
    (spent, _), (spent_drop, stats) = runs[False], runs[True]
    assert stats[1]["dropped_error"] == 1 and stats[1]["dropped_timeout"] == 1 and stats[2]["aggregated"] == 0
    assert spent_drop.num_releases == spent.num_releases == 3
    assert spent_drop.epsilon == spent.epsilon > 0


def test_an_empty_round_is_a_noise_only_release_and_charged():
    s = strategy(q=0.5, z=2.0)
    start_round(s)
    arrays, _ = s.aggregate_train(1, [])
    noise = flat(arrays)
    assert np.all(noise != 0) and np.std(noise) == pytest.approx(2.0 * 1.0 / (0.5 * N), rel=0.5)
    assert s.privacy_spent().num_releases == 1


def test_adaptive_clip_norm_tracks_the_target_quantile_on_a_toy():
    # q = 1 and (almost) no count noise: the clip follows the median of the update norms 1..10.
    s = strategy(q=1.0, clip=0.5, adaptive=AdaptiveClipping(count_noise=1e-9, target_quantile=0.5,
                                                            learning_rate=0.2))
    norms = np.linspace(1.0, 10.0, N) / math.sqrt(15)  # a constant value v gives norm v sqrt(15)
    clips = []
    for rnd in range(1, 61):
        msgs = start_round(s, rnd)
        s.aggregate_train(rnd, [reply(msgs[NODES[p]], full(norms[p])) for p in range(N)])
        clips.append(s.clip)
    assert clips[0] > 0.5  # all clipped: the fraction under the clip is 0 < 0.5, so the clip grows
    assert 4.0 <= np.mean(clips[-20:]) <= 7.0  # oscillates around the median 5.5
    # One step of the rule: all 10 unclipped at q N = 10 -> fraction 1 -> C exp(-0.2 (1 - 0.5)).
    rule = AdaptiveClipping(count_noise=1e-9)
    assert rule.next_clip(2.0, 10 * 0.5, 10.0, np.random.default_rng(0))[0] == pytest.approx(2.0 * math.exp(-0.1))


def test_adaptive_strategy_noises_the_update_with_the_larger_multiplier():
    s = strategy(q=0.5, z=1.2, adaptive=AdaptiveClipping(count_noise=1.0))
    assert s.update_noise == pytest.approx((1.2 ** -2 - 2.0 ** -2) ** -0.5)
    start_round(s)
    _, metrics = s.aggregate_train(1, [])
    assert metrics["noise_std"] == pytest.approx(s.update_noise * 1.0 / (0.5 * N))
    # The accountant charges z (the composition), not the update's multiplier.
    assert s.privacy_spent().epsilon == pytest.approx(
        client_sampled_epsilon_dp_accounting(noise_multiplier=1.2, sample_rate=0.5, rounds=1, delta=1e-3), rel=0.01)


# ------------------------------------------------------------------------------------ scenarios, glue, CLI
def test_cross_device_suite_and_hash_neutral_fields():
    suite = {s.name: s for s in get_suite("cross-device", "cpu")}
    sampled, fixed = suite["cross-device-iid-sampled-eps10"], suite["cross-device-iid-fixed-eps10"]
    assert sampled.num_clients == fixed.num_clients == 200 and sampled.clients_per_round == 20
    assert sampled.client_sample_rate == 0.1 and sampled.min_replies == 0 and fixed.min_replies == 20
    assert {s.target_epsilon for s in suite.values() if s.dp_mode == "central-dp-sampled"} == {1.0, 4.0, 10.0}
    base = Scenario(name="s")
    assert not {"client_sample_rate", "adaptive_clipping"} & set(base.definition())
    assert {"client_sample_rate", "adaptive_clipping"} <= set(HASH_NEUTRAL_DEFAULTS)
    assert dataclasses.replace(sampled, adaptive_clipping=True).hash != sampled.hash


@pytest.mark.parametrize("fields, match", [
    (dict(dp_mode="central-dp-sampled"), "needs client_sample_rate"),
    (dict(dp_mode="central-dp-sampled", client_sample_rate=0.5, clients_per_round=3), r"round\(q N\) = 2"),
    (dict(dp_mode="central-dp-sampled", client_sample_rate=0.5, central_clipping="client"), "clips on the server"),
    (dict(dp_mode="central-dp-sampled", client_sample_rate=0.5, min_clients_per_round=1), "no min_clients"),
    (dict(dp_mode="central-dp", client_sample_rate=0.5), "need dp_mode 'central-dp-sampled'"),
    (dict(dp_mode="central-dp", adaptive_clipping=True), "need dp_mode 'central-dp-sampled'"),
])
def test_sampled_scenario_validation(fields, match):
    with pytest.raises(ScenarioError, match=match):
        Scenario(name="s", num_clients=4, target_epsilon=4.0, delta=1e-5, **fields)


def test_server_glue_builds_the_calibrated_strategy():
    from privacy.mechanisms import CENTRAL_DP_SAMPLED

    sc = get_suite("cross-device", "cpu")
    sc = {s.name: s for s in sc}["cross-device-iid-sampled-adaptive-eps10"]
    side = CENTRAL_DP_SAMPLED.server_side(sc, None, partition_to_node={p: p for p in range(sc.num_clients)},
                                          num_images={})
    s, info = side.strategy, side.record()
    assert side.sampled is s.sampled and info["releases"] == 0 and info["mechanism"] == "central-dp-sampled"
    assert info["sample_rate"] == 0.1 and info["expected_clients"] == pytest.approx(20)
    assert info["update_noise_multiplier"] > info["noise_multiplier"] == s.noise_multiplier
    assert client_sampled_epsilon_dp_accounting(noise_multiplier=s.noise_multiplier, sample_rate=0.1, rounds=sc.rounds,
                                                delta=sc.delta) <= 10.0 * 1.01


def test_bench_account_covers_the_sampled_mode(capsys):
    from benchmark.cli import main

    common = ["account", "--level", "client", "--sample-rate", "0.1", "--population", "200", "--steps", "5",
              "--delta", "1e-5"]
    assert main(common + ["--epsilon", "4"]) == 0
    out = capsys.readouterr().out
    sigma = float(re.search(r"noise_multiplier = ([0-9.]+)", out).group(1))
    assert "opacus-rdp-poisson-clients" in out and "20 of 200 clients expected" in out
    assert 3.96 <= client_sampled_epsilon_dp_accounting(noise_multiplier=sigma, sample_rate=0.1, rounds=5,
                                                        delta=1e-5) <= 4.04
    assert main(common + ["--noise-multiplier", "1.0"]) == 0
    eps = float(re.search(r"epsilon = ([0-9.]+)", capsys.readouterr().out).group(1))
    assert eps == pytest.approx(client_sampled_epsilon_dp_accounting(noise_multiplier=1.0, sample_rate=0.1, rounds=5,
                                                                     delta=1e-5), rel=0.01)
    # Refused in one line, exit 2: an accountant it does not have, a rate outside (0, 1].
    assert main(common + ["--epsilon", "4", "--accountant", "prv"]) == 2
    assert main([*common[:4], "1.5", *common[5:], "--epsilon", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "rdp only" in err[0] and "sample rate" in err[1]


@pytest.mark.slow  # ~4 s: exports the partitions and builds the model
def test_run_federation_dispatches_the_sampled_mode_and_records_its_privacy(tmp_path, monkeypatch):
    """run_federation with a grid that answers in-process (no Ray): the mode's strategy runs, a round
    where a client dropped out still releases, and history.json / the runner's columns carry the
    amplified accounting."""
    from benchmark.federation import server_app
    from benchmark.federation.partition_files import export_partitions
    from benchmark.runner import privacy_metrics

    sc = Scenario(name="cd", num_clients=8, clients_per_round=4, client_sample_rate=0.5, rounds=2,
                  dp_mode="central-dp-sampled", target_epsilon=10.0, delta=1e-3, max_train_images=64,
                  client_canaries=100, attacks=("mia-loss",))
    export_partitions(sc, 0, tmp_path / "parts")
    nodes = {p: 500 + p for p in range(sc.num_clients)}
    monkeypatch.setattr(server_app, "discover_partitions", lambda grid, n, timeout: nodes)
    # The calibration is tested above; a fixed z keeps this test fast.
    monkeypatch.setattr("privacy.accounting.client_sampled_noise", lambda **kw: 1.0)

    class Grid:
        calls = 0

        def send_and_receive(self, messages, timeout):
            Grid.calls += 1
            out = []
            for i, m in enumerate(messages):
                if Grid.calls == 1 and i == 0:
                    continue  # round 1: the first sampled client never answers
                arrays = {k: torch.from_numpy(v.numpy()) + 0.01 for k, v in m.content["arrays"].items()}
                out.append(reply(m, arrays))
            return out

    history = server_app.run_federation(Grid(), {"scenario": sc.to_json(), "seed": 0, "out-dir": str(tmp_path / "out"),
                                                 "partition-dir": str(tmp_path / "parts")})
    c = history["privacy"]
    assert c["accountant"] == "opacus-rdp-poisson-clients" and c["releases"] == 2 and c["sample_rate"] == 0.5
    assert c["epsilon"] == pytest.approx(client_sampled_epsilon_dp_accounting(
        noise_multiplier=c["noise_multiplier"], sample_rate=0.5, rounds=2, delta=1e-3), rel=0.01)
    assert c["noise_multiplier"] == 1.0 and [r["round"] for r in history["rounds"]] == [1, 2]
    r1 = history["rounds"][0]
    assert r1["sampled"] == len(r1["sampled_partitions"]) and r1["aggregated"] == r1["sampled"] - (r1["sampled"] > 0)
    assert privacy_metrics(sc, history)["accountant"] == "opacus-rdp-poisson-clients"
    assert (tmp_path / "out" / "global_model.pt").exists()
    # The canary clients (privacy/canary_clients.py) went through both releases, from the run seed's coins.
    wb = c["whitebox"]
    assert wb["m"] == 100 and wb["steps"] == 2 and wb["sample_rate"] == 0.5 and len(wb["scores"]) == 100
    from privacy.mechanisms import CENTRAL_DP_SAMPLED

    (entry,) = CENTRAL_DP_SAMPLED.audit_canaries(sc, c, 0)
    assert entry.unit == "client" and entry.shape == {"sample_rate": 0.5, "steps": 2}


# ------------------------------------------------------------------------------------ the image level
# The cross-device rows (cpu scale: q = 0.1, 20 rounds, delta 1e-5) as published, by their noise
# multiplier: the image-level epsilon the issue (25, 4c) quotes, and what was charged before
# (add/remove one client at 2C: the client-level accountant at z / 2).
CROSS_DEVICE_ROWS = {"cross-device-iid-sampled-eps1": (2.299804688, 1.54, 3.21),
                     "cross-device-iid-sampled-eps4": (1.027832031, 4.40, 17.08),
                     "cross-device-iid-sampled-eps10": (0.6605529785, 9.68, 44.09)}


def _replace_one_epsilon_by_hand(z: float, q: float, rounds: int, delta: float, h: float = 5e-4) -> float:
    """The replace-one epsilon of the Poisson-sampled Gaussian, computed here without dp_accounting:
    one round's privacy loss L(x) = log P(x)/Q(x) for P = q N(1, z^2) + (1-q) N(0, z^2) against
    Q = q N(-1, z^2) + (1-q) N(0, z^2) (clip norm 1), its distribution under P histogrammed onto a
    grid of width h rounding up (pessimistic), composed ``rounds`` times by FFT, and
    delta(eps) = E[(1 - e^(eps - L))_+] bisected for ``delta``.

    One direction suffices: x -> -x maps P to Q and Q to P, so L_{Q||P}(x) = L_{P||Q}(-x) and the
    loss of Q against Q-samples has the same law as that of P against P-samples: the two
    directions' delta curves are the same."""
    from scipy.stats import norm

    def loss(x):  # log P/Q with the common factor exp(-x^2 / 2 z^2) cancelled; increasing in x
        a = np.logaddexp(np.log(q) + (2 * x - 1) / (2 * z * z), np.log1p(-q))
        b = np.logaddexp(np.log(q) + (-2 * x - 1) / (2 * z * z), np.log1p(-q))
        return a - b

    def cdf_p(x):
        return q * norm.cdf(x, loc=1, scale=z) + (1 - q) * norm.cdf(x, scale=z)

    # Cells of x with L changing by under h across each (|L'| <= 2 / z^2); each cell's P-mass goes to
    # the loss at its right end (L increases), the left tail to the first edge's; past the right
    # end (12 z + 1: P-mass below 1e-30) the loss is taken as +inf.
    top = 12 * z + 1
    edges = np.linspace(-top, top, int(2 * top / (h * z * z / 2)) + 2)
    mass = np.diff(cdf_p(edges))
    mass[0] += cdf_p(edges[0])
    inf_mass = 1 - cdf_p(edges[-1])
    lo = math.floor(loss(edges[0]) / h)
    k = np.ceil(loss(edges[1:]) / h - 1e-9).astype(np.int64) - lo  # rounded up onto the grid
    pmf = np.bincount(k, weights=mass)
    n = rounds * (len(pmf) - 1) + 1
    size = 1 << (n - 1).bit_length()
    composed = np.fft.irfft(np.fft.rfft(pmf, size) ** rounds, size)[:n]
    composed = np.clip(composed, 0, None)
    losses = (rounds * lo + np.arange(n)) * h
    escaped = 1 - (1 - inf_mass) ** rounds  # some round's loss was +inf

    def delta_at(eps):
        keep = losses > eps
        return float(np.sum(composed[keep] * -np.expm1(eps - losses[keep]))) + escaped

    a, b = 0.0, 100.0
    assert delta_at(b) < delta < delta_at(a)
    while b - a > 1e-6 * b:
        mid = (a + b) / 2
        a, b = (mid, b) if delta_at(mid) > delta else (a, mid)
    return b


@pytest.mark.parametrize("name", sorted(CROSS_DEVICE_ROWS))
def test_sampled_image_level_epsilon_of_the_cross_device_rows(name):
    """Issue 25, 4c: one image replaces its (present) client's clipped update within the C-ball and
    the client keeps its Poisson coin: replace-one at the row's own z, not add/remove at 2C. The
    published rows' figures, tighter than the add/remove-at-2C charge."""
    from privacy.accounting import client_sampled_image_epsilon
    from privacy.mechanisms import CENTRAL_DP_SAMPLED

    z, want, old = CROSS_DEVICE_ROWS[name]
    row = {s.name: s for s in get_suite("cross-device", "cpu")}[name]
    assert (row.client_sample_rate, row.rounds, row.delta) == (0.1, 20, 1e-5)
    client_eps = client_sampled_epsilon(noise_multiplier=z, sample_rate=0.1, rounds=20, delta=1e-5)
    columns = {"epsilon": client_eps, "noise_multiplier": z, "sample_rate": 0.1}
    img = CENTRAL_DP_SAMPLED.audited_epsilon(row, columns)
    assert img == CENTRAL_DP_SAMPLED.image_epsilon(row, columns) == pytest.approx(want, rel=0.01)
    assert img == client_sampled_image_epsilon(noise_multiplier=z, sample_rate=0.1, rounds=20, delta=1e-5)
    # What this mode charged before, the client-level accountant at half the noise: the figures.
    before = client_sampled_epsilon(noise_multiplier=z / 2, sample_rate=0.1, rounds=20, delta=1e-5)
    assert before == pytest.approx(old, rel=0.01)
    assert 0 < img < before  # tighter than the old charge (not compared with the client claim: RDP, looser)
    units = {g.unit: g for g in CENTRAL_DP_SAMPLED.guarantees(row, columns)}
    assert units["image"].epsilon == img and units["client"].epsilon == client_eps


@pytest.mark.parametrize("z", [CROSS_DEVICE_ROWS[k][0] for k in sorted(CROSS_DEVICE_ROWS)])
def test_sampled_image_level_epsilon_matches_a_second_implementation(z):
    """The privacy-loss distribution of the replace-one pair built and composed here (numpy and
    scipy's normal CDF only) agrees with dp_accounting's PLD accountant within 1 %."""
    from privacy.accounting import client_sampled_image_epsilon

    ours = _replace_one_epsilon_by_hand(z, 0.1, 20, 1e-5)
    assert client_sampled_image_epsilon(noise_multiplier=z, sample_rate=0.1, rounds=20,
                                        delta=1e-5) == pytest.approx(ours, rel=0.01)


def test_the_antipodal_pair_is_the_worst_replacement_in_the_ball():
    """The pair the accountant analyses, q N(+1) + (1-q) N(0) against q N(-1) + (1-q) N(0), bounds every
    other replacement u -> u' within the unit ball (here along one axis, either direction): its
    hockey-stick divergence is the largest at every e^eps, so it dominates each round."""
    from scipy.stats import norm

    q, z = 0.1, 1.027832031
    x = np.linspace(-14, 14, 56_001)
    dx = x[1] - x[0]

    def mix(u):
        return q * norm.pdf(x, loc=u, scale=z) + (1 - q) * norm.pdf(x, scale=z)

    gammas = np.exp(np.linspace(0, 4, 17))

    def hockey(p, r):
        return np.array([np.sum(np.maximum(p - g * r, 0)) * dx for g in gammas])

    worst = hockey(mix(1.0), mix(-1.0))
    assert np.all(worst > 0)
    for u, v in [(1.0, 0.0), (1.0, 0.5), (0.5, -0.5), (1.0, -0.5), (0.5, 0.0), (0.3, -1.0)]:
        for a, b in ((u, v), (v, u)):
            assert np.all(hockey(mix(a), mix(b)) <= worst + 1e-12), (a, b)


@pytest.mark.parametrize("z, rounds", [(2.0, 20), (5.0, 20), (8.0, 3)])
def test_sampled_image_level_epsilon_without_sampling_is_the_gaussian_at_2c(z, rounds):
    """At q = 1 replace-one is the plain Gaussian at sensitivity 2 (in units of C): per round mu = 2 / z,
    composed a Gaussian of M = mu sqrt(T), delta(eps) = Phi(-eps/M + M/2) - e^eps Phi(-eps/M - M/2)."""
    from privacy.accounting import client_sampled_image_epsilon

    m = 2 / z * math.sqrt(rounds)
    phi = lambda t: 0.5 * math.erfc(-t / math.sqrt(2))  # noqa: E731
    delta_at = lambda e: phi(-e / m + m / 2) - math.exp(e) * phi(-e / m - m / 2)  # noqa: E731
    a, b = 0.0, 200.0
    while b - a > 1e-9 * b:
        mid = (a + b) / 2
        a, b = (mid, b) if delta_at(mid) > 1e-5 else (a, mid)
    got = client_sampled_image_epsilon(noise_multiplier=z, sample_rate=1.0, rounds=rounds, delta=1e-5)
    assert got == pytest.approx(b, rel=0.01) and got >= b * (1 - 1e-6)  # the PLD rounds up


def test_sampled_image_level_epsilon_refuses_bad_values():
    from privacy.accounting import client_sampled_image_epsilon
    from privacy.mechanisms import CENTRAL_DP_SAMPLED

    good = dict(noise_multiplier=1.0, sample_rate=0.1, rounds=5, delta=1e-5)
    for bad in (dict(noise_multiplier=0.0), dict(sample_rate=0.0), dict(sample_rate=1.5), dict(rounds=0),
                dict(delta=1.0), dict(noise_multiplier=math.inf)):
        with pytest.raises(AccountingError):
            client_sampled_image_epsilon(**(good | bad))
    from types import SimpleNamespace

    row = SimpleNamespace(name="s", dp_mode="central-dp-sampled", rounds=5, delta=1e-5)
    for missing in ("noise_multiplier", "sample_rate"):
        columns = {"epsilon": 1.0, "noise_multiplier": 1.0, "sample_rate": 0.1} | {missing: None}
        with pytest.raises(AccountingError, match="needs its noise multiplier and client sample rate"):
            CENTRAL_DP_SAMPLED.image_epsilon(row, columns)


def test_each_central_mode_states_the_neighbouring_relation_its_sampling_supports():
    """Issue 25, 4b: a fixed-count draw from the public seed holds its epsilon for a client that
    stays in the draw with a zeroed update (removing it would hand its slot to another); Poisson
    sampling draws each client on its own, so add/remove holds. One image (4c): its client stays,
    its clipped update moves within the C-ball; the fixed draw releases it (2C), the Poisson sample
    keeps the client's coin (replace-one within the same sample)."""
    from types import SimpleNamespace

    from privacy.mechanisms import CENTRAL_DP, CENTRAL_DP_SAMPLED

    row = SimpleNamespace(name="r", rounds=5, delta=1e-5, num_clients=200, clients_per_round=20)
    cols = {"epsilon": 4.0, "noise_multiplier": 2.0, "sample_rate": 0.1}
    fixed = {g.unit: g.relation for g in CENTRAL_DP.guarantees(row, cols)}
    sampled = {g.unit: g.relation for g in CENTRAL_DP_SAMPLED.guarantees(row, cols)}
    assert fixed["client"].startswith("zero-out one client") and sampled["client"] == "add/remove one client"
    assert fixed["image"].startswith("add/remove one image") and "up to 2C" in fixed["image"]
    assert sampled["image"].startswith("add/remove or substitute one image")
    assert "stays in the Poisson sample" in sampled["image"] and "replaced within the C-ball" in sampled["image"]
