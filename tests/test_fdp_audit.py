"""The f-DP one-run bound (attacks/fdp.py): checked against the (eps, 0) one-run bound where both
apply, and against a simulated null of the exact mechanism it tests (Dirac canaries in a
Poisson-sampled Gaussian composition, scored by the sum of released steps)."""

from __future__ import annotations

import numpy as np
import pytest

from attacks import fdp
from attacks.audit import evidence_bound, evidence_ceiling, one_run_epsilon, one_run_evidence, one_run_fdp_evidence


def _pure_dp(eps: float):
    def f(a):
        a = np.asarray(a, dtype=np.float64)
        return np.clip(np.maximum(1 - np.exp(eps) * a, np.exp(-eps) * (1 - a)), 0.0, 1.0)
    return f


@pytest.mark.parametrize("m, r, v", [(1000, 200, 190), (1000, 900, 890), (200, 100, 95)])
def test_on_a_pure_dp_curve_it_agrees_with_the_binomial_bound(m, r, v):
    """For f of (eps, 0)-DP the f-DP recursion is the one-run test at delta 0 (Steinke et al.'s
    binomial tail, exact for randomised response): the two bounds agree within 0.05 and the f-DP
    one is not above it (it may only be more conservative)."""
    lo, hi = 0.0, 30.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fdp.refutes(_pure_dp(mid), m, r, v, 0.05) else (lo, mid)
    exact = one_run_epsilon(m, r, v, delta=0.0, alpha=0.05)
    assert exact - 0.05 < lo <= exact + 1e-6


def test_tradeoff_curve_is_a_tradeoff_function():
    f = fdp.tradeoff(9.5, 0.5, 400)
    a = np.linspace(0, 1, 201)
    fa = f(a)
    assert fa[0] <= 1 and fa[-1] == 0 and np.all(np.diff(fa) <= 1e-12) and np.all(fa <= 1 - a + 1e-12)


def _simulate(sigma, q, steps, m, rng):
    included = rng.random(m) < 0.5
    scores = rng.binomial(steps, q, m) * included + rng.normal(0.0, np.sqrt(steps) * sigma, m)
    return scores, included


@pytest.mark.parametrize("sigma, q, steps, sides", [
    (33.1, 0.5, 400, "both"), (9.53, 0.5, 400, "both"), (4.41, 0.5, 400, "both"),  # epsilon ~1.1 / 4.7 / 11.9
    (1.68, 0.25, 20, "in"), (0.82, 0.25, 20, "in"),   # canary clients, sampled: epsilon ~4 / 10, one-sided guesses
])
def test_simulated_null_of_the_exact_mechanism_keeps_false_alarms_under_alpha(sigma, q, steps, sides):
    """At level 0.3 per guess count (so that false alarms are frequent enough to count), the
    refutation rate of the mechanism's own curve stays under 0.3 at every guess count, and the
    suite's level (0.05, Bonferroni over the guess counts) raises no more alarms than alpha allows;
    for both guess designs, each on the mechanism it is used for (two-sided: local DP-SGD's many
    steps; one-sided: the sampled canary clients' few draws)."""
    m, n = 1000, 150
    f = fdp.tradeoff(sigma, q, steps)
    rng = np.random.default_rng(int(sigma * 100))
    alarms = np.zeros(4)
    strict = 0
    for trial in range(n):
        scores, included = _simulate(sigma, q, steps, m, rng)
        ev = one_run_evidence(scores, included, seed=trial, sides=sides)
        guesses = ev["guesses"]
        assert ev.get("sides", "both") == sides
        assert [r for r, _ in guesses] == [k * (2 if sides == "both" else 1) for k in (50, 100, 250, 450)]
        alarms += [fdp.refutes(f, m, r, v, 0.3) for r, v in guesses]
        strict += any(fdp.refutes(f, m, r, v, 0.05 / len(guesses)) for r, v in guesses)
    rate = alarms / n
    assert np.all(rate <= 0.3 + 2 * np.sqrt(0.3 * 0.7 / n)), rate
    assert strict <= 0.05 * n + 2 * np.sqrt(0.05 * 0.95 * n)


def test_bound_sits_below_the_truth_and_catches_a_weaker_mechanism():
    """Evidence from the exact mechanism at sigma 9.53 (epsilon 4.66): the bound stays below 4.66;
    from the same shape at 0.4 times the noise (a planted defect) it exceeds 4.66."""
    q, steps, m = 0.5, 400, 2000
    rng = np.random.default_rng(7)
    claim = fdp.epsilon(9.53, q, steps, 1e-5)
    for sigma, caught in ((9.53, False), (0.4 * 9.53, True)):
        scores, included = _simulate(sigma, q, steps, m, rng)
        ev = one_run_fdp_evidence(scores, included, sample_rate=q, steps=steps, seed=0)
        bound = evidence_bound(ev, delta=1e-5, alpha=0.05)
        assert (bound > claim) is caught, (sigma, bound, claim)
    assert evidence_ceiling(ev, delta=1e-5, alpha=0.05) > 8


def test_ceiling_grows_with_m_where_the_delta_bound_cannot():
    """Every guess right: the (eps, delta) bound is capped near 4.5 by its 2 m delta term; the f-DP
    bound reaches 7.5 at m = 1,000 and 10.5 at m = 10,000 (alpha 0.05 / 40, delta 1e-5)."""
    out = {}
    for m in (1000, 10_000):
        k = int(0.45 * m)
        out[m] = (one_run_epsilon(m, 2 * k, 2 * k, delta=1e-5, alpha=0.05 / 40),
                  fdp.fdp_epsilon(m, 2 * k, 2 * k, sample_rate=0.5, steps=400, delta=1e-5, alpha=0.05 / 40))
    assert out[1000][0] < 4.6 and out[10_000][0] < 4.6
    assert 7.0 < out[1000][1] < out[10_000][1] and out[10_000][1] > 10


@pytest.mark.parametrize("sigma,rate,steps", [(0.9, 1 / 3, 600), (3.0, 0.05, 100), (40.0, 1.0, 20), (0.3, 0.5, 10), (2.0, 0.2, 1)])
def test_the_vectorised_hockey_stick_equals_dp_accountings_own(sigma, rate, steps):
    """attacks.fdp.hockey_stick against ``PrivacyLossDistribution.get_delta_for_epsilon`` on the
    suite's grid: the curves the f-DP bound tests are the library's, to rounding."""
    from dp_accounting.pld import privacy_loss_distribution as pld_mod

    from attacks.fdp import EPS_GRID, hockey_stick

    pld = pld_mod.from_gaussian_mechanism(standard_deviation=sigma, sensitivity=1.0, sampling_prob=rate,
                                          pessimistic_estimate=True, value_discretization_interval=1e-3)
    pld = pld.self_compose(steps)
    grid = EPS_GRID[::7]
    np.testing.assert_allclose(hockey_stick(pld, grid), pld.get_delta_for_epsilon(grid), rtol=1e-9, atol=1e-15)


def test_one_sided_evidence_counts_and_its_perfect_attack():
    from attacks.audit import AuditError, perfect_evidence

    scores = np.arange(40, dtype=float)              # the highest scores are the included ones
    included = scores >= 20
    ev = one_run_evidence(scores, included, seed=0, sides="in")
    assert ev["guesses"] == [[2, 2], [4, 4], [10, 10], [18, 18]]
    two = one_run_evidence(scores, included, seed=0)
    assert "sides" not in two and two["guesses"] == [[4, 4], [8, 8], [20, 20], [36, 36]]
    flipped = one_run_evidence(-scores, included, seed=0, sides="in")
    assert [v for _, v in flipped["guesses"]] == [0, 0, 0, 0]
    assert perfect_evidence(flipped)["guesses"] == [[2, 2], [4, 4], [10, 10], [18, 18]]
    few = one_run_evidence(scores, scores >= 37, seed=0, sides="in")   # 3 included: at most 3 right
    assert perfect_evidence(few)["guesses"] == [[2, 2], [4, 3], [10, 3], [18, 3]]
    with pytest.raises(AuditError, match="guess sides"):
        one_run_evidence(scores, included, sides="out")
