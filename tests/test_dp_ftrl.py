"""DP-FTRL (Kairouz et al. 2021): the tree-aggregation accounting against a first-principles
computation, `bench account --mechanism dp-ftrl`, the tree's noise (variances and covariances
measured over many seeded draws) and the one-participation-per-tree rule."""

import math
import re

import numpy as np
import pytest

from privacy import accounting as acc
from privacy import tree_aggregation
from privacy.tree_aggregation import ParticipationGuard, TreeAggregator, tree_depth

DELTA = 1e-5
REFERENCE = [(2.0, 100, 6.5426), (1.0, 100, 15.1754), (3.0, 20, 3.3841)]  # (sigma, steps, epsilon at 1e-5)


def dyadic_cover(t: int) -> list[tuple[int, int]]:
    """The nodes covering [1, t], written independently of the aggregator: greedily from the left,
    the largest aligned block of size 2^j (start - 1 divisible by 2^j) that still ends by t."""
    nodes, start = [], 1
    while start <= t:
        size = 1
        while (start - 1) % (2 * size) == 0 and start - 1 + 2 * size <= t:
            size *= 2
        nodes.append((start, start + size - 1))
        start += size
    return nodes


# ------------------------------------------------------------------------------ accounting
@pytest.mark.parametrize("sigma, steps, expected", REFERENCE)
def test_reference_epsilons(sigma, steps, expected):
    assert acc.ftrl_tree_epsilon(noise_multiplier=sigma, steps=steps, delta=DELTA) == pytest.approx(expected, rel=0.01)


def test_the_rdp_accountant_needs_replace_special_for_the_tree():
    import dp_accounting

    event = dp_accounting.SingleEpochTreeAggregationDpEvent(1.0, step_counts=10)
    rel = dp_accounting.NeighboringRelation
    assert dp_accounting.rdp.RdpAccountant(neighboring_relation=rel.REPLACE_SPECIAL).supports(event)
    assert not dp_accounting.rdp.RdpAccountant(neighboring_relation=rel.ADD_OR_REMOVE_ONE).supports(event)
    assert not dp_accounting.rdp.RdpAccountant(neighboring_relation=rel.REPLACE_ONE).supports(event)


def test_depth_is_what_one_leaf_touches_and_what_dp_accounting_charges():
    """The sensitivity, from the tree itself: over T steps the released nodes are the union of the
    covers of [1, t], t <= T; one leaf lies in at most ceil(log2(T + 1)) of them. dp_accounting's
    RDP for the event at order 2, sigma 1 is 2 * depth / 2 = depth: the same count. (The count
    ceil(log2 T) + 1 of a full tree over 2^ceil(log2 T) leaves agrees only when T is a power of
    two; otherwise it includes a root that is never completed, hence never released, by step T.)"""
    from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_single_epoch_tree_aggregation

    for T in range(1, 300):
        released = {node for t in range(1, T + 1) for node in dyadic_cover(t)}
        touched = max(sum(a <= leaf <= b for a, b in released) for leaf in range(1, T + 1))
        assert touched == tree_depth(T) == math.ceil(math.log2(T + 1)), T
        assert float(_compute_rdp_single_epoch_tree_aggregation(1.0, T, [2.0])[0]) == touched, T
        assert (math.ceil(math.log2(T)) + 1 == touched) == ((T & (T - 1)) == 0), T


def _rdp_to_dp_improved(rdp_of_order, orders, delta):
    """(epsilon, delta) from RDP, Balle et al. 2020 Thm 21 / Canonne, Kamath, Steinke 2020 Prop 12:
    eps = rdp(a) + log((a - 1) / a) - (log delta + log a) / (a - 1), minimised over the orders."""
    return min(rdp_of_order(a) + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1) for a in orders)


def _rdp_to_dp_basic(rdp_of_order, orders, delta):
    """Mironov 2017, Prop 3: eps = rdp(a) + log(1 / delta) / (a - 1)."""
    return min(rdp_of_order(a) + math.log(1 / delta) / (a - 1) for a in orders)


def _gaussian_exact_epsilon(mu, delta):
    """The tight epsilon of a Gaussian mechanism with sensitivity / std = mu (Balle and Wang 2018):
    delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu), solved by bisection."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    d = lambda e: phi(mu / 2 - e / mu) - math.exp(e) * phi(-mu / 2 - e / mu)  # noqa: E731
    lo, hi = 0.0, 200.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("sigma, steps, expected", REFERENCE + [(0.7, 7, None), (5.0, 1000, None), (1.3, 64, None)])
def test_epsilon_from_first_principles(sigma, steps, expected):
    """The tree with one participation per client is the Gaussian mechanism at sensitivity
    sqrt(depth) (depth counted from the tree above), RDP a * depth / (2 sigma^2); converted with
    the improved RDP -> DP conversion over our own dense grid of orders it agrees with dp_accounting
    within 1% (dp_accounting minimises over its coarser default orders, so it is >= ours). Mironov's
    basic conversion is a valid but looser bound (about 10% higher here), and the exact Gaussian
    epsilon is a lower bound on any RDP conversion (about 7% lower)."""
    depth = sum(a <= 1 <= b for a, b in {n for t in range(1, steps + 1) for n in dyadic_cover(t)})  # leaf 1
    rdp = lambda a: a * depth / (2 * sigma**2)  # noqa: E731
    orders = np.concatenate([np.linspace(1.02, 20, 4000), np.linspace(20, 2000, 4000)]).tolist()
    ours = _rdp_to_dp_improved(rdp, orders, DELTA)
    theirs = acc.ftrl_tree_epsilon(noise_multiplier=sigma, steps=steps, delta=DELTA)
    assert theirs == pytest.approx(ours, rel=0.01)
    assert theirs >= ours * (1 - 1e-9)
    if expected is not None:
        assert ours == pytest.approx(expected, rel=0.01)
    basic = _rdp_to_dp_basic(rdp, orders, DELTA)
    exact = _gaussian_exact_epsilon(math.sqrt(depth) / sigma, DELTA)
    assert exact < ours < basic


def test_the_over_counted_depth_would_miss_the_reference():
    """ceil(log2 100) + 1 = 8 levels (a full 128-leaf tree) instead of 7 gives ~7.08, not 6.5426."""
    rdp8 = lambda a: a * 8 / (2 * 2.0**2)  # noqa: E731
    orders = np.linspace(1.02, 200, 20000).tolist()
    assert _rdp_to_dp_improved(rdp8, orders, DELTA) > 6.5426 * 1.05


@pytest.mark.parametrize("target, steps", [(6.5426, 100), (1.0, 100), (4.0, 20), (0.5, 1), (20.0, 1000)])
def test_noise_for_a_target_is_the_smallest_to_the_tolerance(target, steps):
    sigma = acc.ftrl_tree_noise(target_epsilon=target, steps=steps, delta=DELTA)
    assert acc.ftrl_tree_epsilon(noise_multiplier=sigma, steps=steps, delta=DELTA) <= target
    assert acc.ftrl_tree_epsilon(noise_multiplier=sigma * (1 - 1e-3), steps=steps, delta=DELTA) > target


@pytest.mark.parametrize("kwargs, match", [
    (dict(noise_multiplier=0.0, steps=10, delta=DELTA), "noise multiplier must be > 0"),
    (dict(noise_multiplier=-1.0, steps=10, delta=DELTA), "noise multiplier must be > 0"),
    (dict(noise_multiplier=float("inf"), steps=10, delta=DELTA), "noise multiplier must be > 0"),
    (dict(noise_multiplier=1.0, steps=0, delta=DELTA), "steps must be an integer >= 1"),
    (dict(noise_multiplier=1.0, steps=2.5, delta=DELTA), "steps must be an integer >= 1"),
    (dict(noise_multiplier=1.0, steps=10, delta=0.0), r"delta must be in \(0, 1\)"),
    (dict(noise_multiplier=1.0, steps=10, delta=1.0), r"delta must be in \(0, 1\)"),
])
def test_bad_values_are_refused_in_one_line(kwargs, match):
    with pytest.raises(acc.AccountingError, match=match) as err:
        acc.ftrl_tree_epsilon(**kwargs)
    assert "\n" not in str(err.value)
    noise_kwargs = dict(kwargs, target_epsilon=1.0)
    noise_kwargs.pop("noise_multiplier")
    if "noise multiplier" not in match:
        with pytest.raises(acc.AccountingError, match=match):
            acc.ftrl_tree_noise(**noise_kwargs)
    with pytest.raises(acc.AccountingError, match="epsilon must be > 0"):
        acc.ftrl_tree_noise(target_epsilon=0.0, steps=10, delta=DELTA)


# ----------------------------------------------------------------------------------- the CLI
FTRL = ["account", "--level", "client", "--mechanism", "dp-ftrl", "--steps", "100", "--delta", "1e-5"]


def test_bench_account_dp_ftrl(capsys):
    from benchmark.cli import main

    assert main(FTRL + ["--noise-multiplier", "2.0"]) == 0
    out = capsys.readouterr().out
    assert float(re.search(r"epsilon = ([0-9.]+)", out).group(1)) == pytest.approx(6.5426, rel=0.01)
    assert "dp-ftrl" in out and acc.FTRL_ACCOUNTANT in out
    assert main(FTRL + ["--epsilon", "4"]) == 0
    sigma = float(re.search(r"noise_multiplier = ([0-9.]+)", capsys.readouterr().out).group(1))
    assert 3.96 <= acc.ftrl_tree_epsilon(noise_multiplier=sigma, steps=100, delta=1e-5) <= 4.0 + 1e-4
    # --population is optional for the tree; given, delta < 1/N is still checked.
    assert main(FTRL + ["--noise-multiplier", "2.0", "--population", "1000"]) == 0
    assert "epsilon = 6.54" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--sample-rate", "0.1"], "dp-ftrl samples no clients"),
    (["--accountant", "prv"], "rdp only"),
    (["--population", "100", "--delta", "0.05"], "must be below 1/N"),
    (["--noise-multiplier", "0"], "noise multiplier must be > 0"),
    (["--steps", "0"], "steps must be an integer >= 1"),
])
def test_bench_account_dp_ftrl_refuses_bad_combinations(capsys, extra, message):
    from benchmark.cli import main

    argv = FTRL + ["--noise-multiplier", "1.0"] if "--noise-multiplier" not in extra else list(FTRL)
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: ") and message in err[0], err


def test_bench_account_mechanism_is_client_level_and_dp_fedavg_is_the_default(capsys):
    from benchmark.cli import main

    sample = ["account", "--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "10", "--delta", "1e-5"]
    for mechanism in ("dp-ftrl", "dp-fedavg"):
        assert main(sample + ["--mechanism", mechanism]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "client-level mechanism" in err[0], err
    client = ["account", "--level", "client", "--noise-multiplier", "1.0", "--steps", "10", "--delta", "1e-5",
              "--population", "10"]
    assert main(client) == 0
    default = capsys.readouterr().out
    assert main(client + ["--mechanism", "dp-fedavg"]) == 0
    assert capsys.readouterr().out == default and acc.CLIENT_ACCOUNTANT in default
    assert main(["account", "--level", "client", "--mechanism", "dp-sgd", "--epsilon", "1", "--steps", "5",
                 "--delta", "1e-5"]) == 2
    assert "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------------- tree aggregation
def test_the_aggregator_follows_the_dyadic_decomposition():
    tree = TreeAggregator((), std=1.0, rng=np.random.default_rng(0))
    for t in range(1, 70):
        tree.add(0.0, step=t)
        sizes = [b - a + 1 for a, b in dyadic_cover(t)]
        assert [2**j for j in tree.node_levels()] == sizes and len(sizes) == bin(t).count("1"), t


def test_prefix_sums_without_noise_are_exact():
    rng = np.random.default_rng(1)
    ints = rng.integers(-1000, 1000, size=(37, 3, 2)).astype(np.float64)
    tree = TreeAggregator((3, 2), std=0.0)
    out = np.stack([tree.add(v) for v in ints])
    assert np.array_equal(out, np.cumsum(ints, axis=0))  # integers: no rounding at all
    floats = rng.normal(size=(37, 3, 2))
    tree.restart()
    out = np.stack([tree.add(v) for v in floats])
    np.testing.assert_allclose(out, np.cumsum(floats, axis=0), rtol=0, atol=1e-12)


def test_each_node_draws_its_noise_once_from_the_projects_secure_sampler(monkeypatch):
    calls = []
    real = tree_aggregation.secure_normal

    def counting(rng, std, shape):
        calls.append((std, shape))
        return real(rng, std, shape)

    monkeypatch.setattr(tree_aggregation, "secure_normal", counting)
    tree = TreeAggregator(4, std=0.3, rng=np.random.default_rng(2))
    for _ in range(13):
        tree.add(np.zeros(4))
    assert calls == [(0.3, (4,))] * 13  # one new node per step, none drawn twice
    sentinel = np.random.default_rng(5)
    monkeypatch.setattr(tree_aggregation, "secret_numpy_rng", lambda: sentinel)
    assert TreeAggregator(1, std=1.0).rng is sentinel  # no generator given: the OS-seeded one


def _noise_over_draws(n, steps, std, seed):
    """Each coordinate of a shape-(n,) tree is an independent scalar tree: n draws at once."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(steps, n)) * 3.0
    tree = TreeAggregator(n, std=std, rng=rng)
    released = np.stack([tree.add(v, step=t + 1) for t, v in enumerate(values)])
    return released - np.cumsum(values, axis=0), tree


def test_noise_variance_and_covariance_match_the_shared_nodes():
    n, steps, std = 20_000, 8, 0.7
    noise, _ = _noise_over_draws(n, steps, std, seed=3)
    covers = [set(dyadic_cover(t)) for t in range(1, steps + 1)]
    for s in range(steps):
        for t in range(s, steps):
            k_st = std**2 * len(covers[s] & covers[t])
            k_ss, k_tt = std**2 * len(covers[s]), std**2 * len(covers[t])
            if s == t:
                assert k_ss == std**2 * bin(s + 1).count("1")
            emp = float(np.mean(noise[s] * noise[t]))  # the mean is known to be 0
            se = math.sqrt((k_ss * k_tt + k_st**2) / n)  # Var(XY) of a zero-mean Gaussian pair
            assert abs(emp - k_st) < 5 * se, (s + 1, t + 1, emp, k_st, se)
        assert abs(float(noise[s].mean())) < 5 * math.sqrt(std**2 * len(covers[s]) / n)
    # Steps 4 and 5 share the node [1, 4]; steps 3 and 4 share nothing: both visibly so.
    assert float(np.mean(noise[3] * noise[4])) > 0.8 * std**2
    assert abs(float(np.mean(noise[2] * noise[3]))) < 5 * math.sqrt(2 * 1 * std**4 / n)


def test_restart_starts_a_fresh_tree_and_max_steps_holds():
    n, std = 20_000, 1.0
    rng = np.random.default_rng(4)
    tree = TreeAggregator(n, std=std, rng=rng, max_steps=3)
    first = [tree.add(np.zeros(n)) for _ in range(3)]
    with pytest.raises(ValueError, match="beyond the tree's 3 accounted steps"):
        tree.add(np.zeros(n))
    tree.restart()
    assert tree.step == 0
    again = tree.add(np.zeros(n), step=1)
    se = math.sqrt(std**4 / n)
    assert abs(float(np.mean(first[0] * again))) < 5 * se  # new node [1], new noise
    assert abs(float(np.mean(again**2)) - std**2) < 5 * math.sqrt(2 * std**4 / n)
    with pytest.raises(ValueError, match="expected step 2 of this tree, got step 3"):
        tree.add(np.zeros(n), step=3)
    with pytest.raises(ValueError, match="shape"):
        tree.add(np.zeros(n + 1))
    with pytest.raises(ValueError, match="noise std"):
        TreeAggregator(1, std=-1.0)


# ------------------------------------------------------------------------------ participation
def test_a_client_takes_part_at_most_once_per_tree():
    guard = ParticipationGuard()
    guard.admit(["a", "b"])
    guard.admit([3])
    with pytest.raises(ValueError, match=r"client 'b' already took part in step 1 of this tree epoch"):
        guard.admit(["c", "b"])
    assert not guard.has_taken_part("c")  # a refused step records nobody
    with pytest.raises(ValueError, match="client 'd' appears twice in step 3"):
        guard.admit(["d", "d"])
    guard.admit(["c"])
    guard.restart()
    guard.admit(["a", "b", 3, "c"])  # a new tree: everyone may take part again
    with pytest.raises(ValueError, match="client 3 already took part in step 1"):
        guard.admit([3])
