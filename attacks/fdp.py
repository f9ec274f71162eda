"""The f-DP one-run bound (Mahloujifar, Melis, Chaudhuri, ICML 2025, "Auditing f-Differential Privacy
in One Run"), for canaries whose mechanism is a Poisson-sampled Gaussian composition (DP-SGD's).

Where the (epsilon, delta) one-run bound of :mod:`attacks.audit` pays ``2 m delta`` for the delta
part of the claim (with delta = 1e-5 that caps its ceiling near 4.5 for any m), this bound tests the
claim's whole trade-off curve ``f`` (type II error as a function of type I error): under f-DP with
respect to each canary, the chance that r guesses among m canaries get v right is bounded through
the recursion of the paper's Algorithm (its "audit with cap"), and the observation refutes f
where the mass the recursion needs exceeds ``r / m`` at level alpha (:func:`refutes`).

The curve tested is the mechanism's own: ``steps`` compositions of the Gaussian mechanism with
sensitivity 1 and noise ``sigma``, each step sampled at ``sample_rate`` (add/remove one canary),
as Google's ``dp_accounting`` privacy-loss distribution computes it (pessimistic discretisation),
turned into a trade-off function through its privacy profile: if M is (eps, delta(eps))-DP for all
eps >= 0, then M is f-DP with ``f(a) = sup_eps max(0, 1 - delta(eps) - e^eps a,
e^-eps (1 - delta(eps) - a))`` (Dong, Roth, Su 2022, Proposition 2.12; the sup over a finite eps
grid is smaller, so the tested claim is weaker than the mechanism's: the test stays valid).

The bound, as an epsilon: the family of claims is "this DP-SGD shape (rate, steps) at noise sigma",
whose epsilon at the run's delta is ``epsilon(sigma)`` (the same PLD). The bound is
``epsilon(sigma*)`` for the smallest sigma* the observation refutes (on a fixed grid of noise
multipliers, so that every bound of a run shares the cached curves): no
mechanism of this shape with a smaller epsilon could have produced it (with probability >= 1 -
alpha). It refutes a row exactly when the row's own noise is refuted. Unlike the (eps, delta)
bound it assumes the mechanism's shape; a wrong shape (a sampler running at 4 times the rate)
is what it catches, not what it assumes away: the curve is the *claimed* one.
"""

from __future__ import annotations

import functools
import math

import numpy as np

EPS_GRID = np.linspace(0.0, 40.0, 4001)   # the privacy profile's eps grid (the sup in f)
SIGMA_TOP = 1024.0                        # the search grid's largest noise multiplier
GRID_PER_OCTAVE = 64                      # grid points per halving of sigma (1.1% apart)
EPS_CAP = 30.0                            # the largest epsilon the bound reports


@functools.lru_cache(maxsize=4096)
def _profile(sigma: float, sample_rate: float, steps: int) -> tuple[np.ndarray, float]:
    """(delta(eps) on EPS_GRID, and a function-free handle) of the composed sampled Gaussian."""
    from dp_accounting.pld import privacy_loss_distribution as pld_mod

    pld = pld_mod.from_gaussian_mechanism(standard_deviation=sigma, sensitivity=1.0, sampling_prob=sample_rate,
                                          pessimistic_estimate=True, value_discretization_interval=1e-3)
    pld = pld.self_compose(steps)
    return np.minimum(hockey_stick(pld, EPS_GRID), 1.0), pld


def hockey_stick(pld, epsilons: np.ndarray) -> np.ndarray:
    """``pld.get_delta_for_epsilon(epsilons)`` (epsilons ascending) by suffix sums: dp_accounting
    0.6 walks the grid and the loss support in a Python loop (5 s of a privacy-suite run's 8 s audit
    on a 2-core CPU, 4,001 epsilons by some 10^4 losses for each of ~50 curves); the same sums,
    vectorised. ``delta(eps) = inf_mass + sum_{loss > eps} p (1 - e^(eps - loss))``, the max over
    the remove and add pmfs. Reads the pmfs' fields (dp_accounting's own formula in
    ``pld_pmf._get_delta_for_epsilon_vectorized``); ``tests/test_fdp_audit.py`` checks it against
    the library's method, so a release that changes them fails there, not silently."""
    from dp_accounting.pld import pld_pmf

    def one(pmf) -> np.ndarray:
        if isinstance(pmf, pld_pmf.DensePLDPmf):
            losses = (np.arange(pmf.size) + pmf._lower_loss) * pmf._discretization
            probs = np.asarray(pmf._probs, dtype=np.float64)
        else:
            losses, probs = (np.asarray(x, dtype=np.float64) for x in pmf._get_losses_probs())
        tail = np.append(np.cumsum(probs[::-1])[::-1], 0.0)                      # sum over loss index >= i
        tail_low = np.append(np.cumsum((probs * np.exp(-losses))[::-1])[::-1], 0.0)
        i = np.searchsorted(losses, epsilons, side="right")                      # the first loss > eps
        return pmf._infinity_mass + tail[i] - np.exp(epsilons) * tail_low[i]

    epsilons = np.asarray(epsilons, dtype=np.float64)
    deltas = one(pld._pmf_remove)
    return deltas if pld._symmetric else np.maximum(deltas, one(pld._pmf_add))


def epsilon(sigma: float, sample_rate: float, steps: int, delta: float) -> float:
    """The family's epsilon at ``delta`` (the same PLD as its trade-off curve)."""
    return float(_profile(sigma, sample_rate, steps)[1].get_epsilon_for_delta(delta))


def tradeoff(sigma: float, sample_rate: float, steps: int):
    """``f(a)``: the least type II error at type I error ``a`` (module docstring), vectorised over a."""
    deltas, _ = _profile(sigma, sample_rate, steps)
    e = np.exp(EPS_GRID)
    slack = 1.0 - deltas

    def f(a):
        a = np.asarray(a, dtype=np.float64)[..., None]
        val = np.maximum(slack - e * a, (slack - a) / e)
        return np.clip(val.max(axis=-1), 0.0, 1.0)

    return f


def refutes(f, m: int, r: int, v: int, alpha: float) -> bool:
    """Whether v correct guesses out of r, among m canaries, refute f-DP at level alpha: the
    paper's recursion with cap (``blow-up inverse`` ``x -> f(1 - x)``)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m} r={r} v={v}")
    if r == 0:
        return False
    right = alpha * v / m
    wrong = alpha * (r - v) / m
    for i in range(v - 1, -1, -1):
        new_wrong = max(wrong, float(f(1.0 - right)))
        if new_wrong == wrong:
            break
        right = min(right + (i / (r - i)) * (new_wrong - wrong), 1.0)
        wrong = new_wrong
    return right + wrong > r / m


def _sigma(k: int) -> float:
    """The k-th noise multiplier of the search grid: SIGMA_TOP * 2^(-k / GRID_PER_OCTAVE)."""
    return SIGMA_TOP * 2.0 ** (-k / GRID_PER_OCTAVE)


@functools.lru_cache(maxsize=65536)  # a run's bounds are recomputed at several alphas (run, suite, row)
def fdp_epsilon(m: int, r: int, v: int, *, sample_rate: float, steps: int, delta: float, alpha: float) -> float:
    """The f-DP one-run lower bound on epsilon (module docstring): the epsilon of the smallest noise
    multiplier on the search grid (ratio 2^(1/64), from SIGMA_TOP down) that the observation refutes;
    0 if not even SIGMA_TOP is; at most EPS_CAP (the walk stops where the epsilon exceeds it)."""

    def refuted(k: int) -> bool:
        return refutes(tradeoff(_sigma(k), sample_rate, steps), m, r, v, alpha)

    def eps(k: int) -> float:
        return epsilon(_sigma(k), sample_rate, steps, delta)

    if r == 0 or not refuted(0):
        return 0.0
    hi = 0                                   # refuted
    while True:                              # walk down an octave at a time
        nxt = hi + GRID_PER_OCTAVE
        if eps(nxt) > EPS_CAP:
            return min(eps(hi), EPS_CAP)
        if not refuted(nxt):
            lo = nxt
            break
        hi = nxt
    while lo - hi > 1:                       # refuted(hi), not refuted(lo), lo > hi
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if refuted(mid) else (mid, hi)
    return eps(hi)
