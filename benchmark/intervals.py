"""The difference of two rows' means over seeds, with its 95 % t-interval.

Seed k is the same data split and initialisation in every row of a suite, so two rows that share
seeds are compared pair by pair: the t-interval of the per-seed differences (n - 1 degrees of
freedom) over the seeds both ran. Rows that share fewer than two seeds get Welch's unpaired
interval. With fewer than two values on a side, or none of the spread a t-interval needs, there is
no interval, and nothing is called significant. ``scipy.stats.ttest_rel`` and ``ttest_ind(...,
equal_var=False)`` give the same intervals (tests/test_intervals.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

PAIRED, WELCH = "paired", "Welch"
TOO_FEW = "too few seeds"   # under 2 values on a side: neither test applies
NO_SPREAD = "no spread"     # every value (or per-seed difference) the same: the t-interval is undefined


@dataclass(frozen=True)
class Difference:
    """mean(A) - mean(B) over the seeds used, and its interval (``lo``, ``hi``; None without one)."""

    diff: float | None
    lo: float | None
    hi: float | None
    method: str        # PAIRED, WELCH, or TOO_FEW
    n_a: int           # seeds of A used (paired: the shared seeds, as n_b)
    n_b: int
    level: float = 0.95

    @property
    def paired(self) -> bool:
        return self.method == PAIRED

    @property
    def n(self) -> int:
        """The seeds behind the difference: the pairs if paired, else both sides' runs."""
        return self.n_a if self.paired else self.n_a + self.n_b

    @property
    def no_interval(self) -> str | None:
        """Why there is no interval (TOO_FEW, NO_SPREAD); None where there is one."""
        return None if self.lo is not None else TOO_FEW if self.method == TOO_FEW else NO_SPREAD

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (no interval: not significant)."""
        return self.lo is not None and (self.lo > 0 or self.hi < 0)


def _values(xs: Mapping) -> dict[int, float]:
    """seed -> value, the seeds without a finite value dropped (not measured in that run)."""
    return {int(k): float(v) for k, v in xs.items() if v is not None and math.isfinite(float(v))}


def _mean_var(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def _t(level: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def difference(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> Difference:
    """A - B of two rows' means of one column (``a``, ``b``: seed -> that seed's value): paired by
    seed where they share at least 2 seeds (over those seeds only), else Welch's unpaired interval."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level} is not between 0 and 1")
    a, b = _values(a), _values(b)
    shared = sorted(a.keys() & b.keys())
    if len(shared) >= 2:
        diff, var = _mean_var([a[k] - b[k] for k in shared])
        n = len(shared)
        return _interval(diff, math.sqrt(var / n), n - 1, PAIRED, n, n, level)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        diff = sum(a.values()) / na - sum(b.values()) / nb if na and nb else None
        return Difference(diff, None, None, TOO_FEW, na, nb, level)
    (ma, va), (mb, vb) = _mean_var(list(a.values())), _mean_var(list(b.values()))
    sa, sb = va / na, vb / nb
    se2 = sa + sb
    df = se2 ** 2 / (sa ** 2 / (na - 1) + sb ** 2 / (nb - 1)) if se2 > 0 else 0.0  # Welch-Satterthwaite
    return _interval(ma - mb, math.sqrt(se2), df, WELCH, na, nb, level)


def _interval(diff: float, se: float, df: float, method: str, na: int, nb: int, level: float) -> Difference:
    if not se > 0:  # no spread: no interval, rather than a point
        return Difference(diff, None, None, method, na, nb, level)
    half = _t(level, df) * se
    return Difference(diff, diff - half, diff + half, method, na, nb, level)


def mean_halfwidth(std: float | None, n: int | None, level: float = 0.95) -> float | None:
    """Half the t-interval of a mean of ``n`` seeds with standard deviation ``std`` (ddof=1);
    None for one seed or no std (no interval, never a guessed one)."""
    if std is None or n is None or not math.isfinite(float(std)) or int(n) < 2:
        return None
    return _t(level, int(n) - 1) * float(std) / math.sqrt(int(n))
