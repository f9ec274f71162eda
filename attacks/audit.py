"""Empirical privacy audit: a lower bound on epsilon from what a membership attack achieved
(Jagielski, Ullman, Oprea 2020, "Auditing Differentially Private Machine Learning").

If training is (epsilon, delta)-DP, then for *any* test that flags a candidate as a member, with
false-positive rate FPR (non-members flagged) and false-negative rate FNR (members missed),

    1 - FNR <= e^eps FPR + delta    and    1 - FPR <= e^eps FNR + delta,

so  eps >= max( log((1 - delta - FNR) / FPR),  log((1 - delta - FPR) / FNR) ).

FPR and FNR are only estimated, so they are replaced by their one-sided Clopper-Pearson upper
bounds; with each bound at confidence 1 - alpha/2, both hold together with probability >= 1 - alpha
(alpha = 0.05: 95 %). The threshold must not be chosen on the same samples it is evaluated on
(that would pick the luckiest threshold): the candidates are split in two halves, stratified by
membership with a seeded permutation; the threshold is chosen on one half (maximising the same
bound) and the bound is computed on the other. Several attacks (and canary sets) audited at once
share the 5 % by a Bonferroni correction (``n_tests``), so the reported maximum holds at 95 %.

What a bound means here: members and non-members are a seeded random split of the same data
(recorded at partition time), so membership is randomised as the DP definition's neighbouring
datasets require, but one training run audits many candidates at once; like Jagielski et al.'s
per-example bound it is a check, not a proof (Steinke et al. 2023 give the exact one-run analysis).
A DP row whose lower bound exceeds its claimed epsilon is a *failed audit*: the claim, the
accounting or the implementation is wrong. Canaries (outliers planted in one client's data, see
``attacks.canaries``) are the most vulnerable candidates and make the bound tighter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta


def clopper_pearson_upper(k, n, alpha: float):
    """One-sided (1 - alpha) upper confidence bound of a binomial rate, k successes in n
    (elementwise over arrays of k)."""
    k = np.asarray(k)
    with np.errstate(invalid="ignore"):
        out = np.where(k >= n, 1.0, beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1)))
    return float(out) if out.ndim == 0 else out


def _bound(fpr, fnr, delta: float):
    """The DP lower bound on epsilon for tests with these error rates (0 where nothing is certified);
    elementwise over arrays."""
    fpr, fnr = np.asarray(fpr, dtype=np.float64), np.asarray(fnr, dtype=np.float64)
    best = np.zeros(np.broadcast(fpr, fnr).shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        for a, b in ((fnr, fpr), (fpr, fnr)):   # log((1 - delta - a) / b)
            num = 1.0 - delta - a
            val = np.where(b > 0, np.log(np.maximum(num, 1e-300) / np.where(b > 0, b, 1.0)), np.inf)
            best = np.maximum(best, np.where(num > 0, val, 0.0))
    return float(best) if best.ndim == 0 else best


def _error_counts(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray):
    """(false positives, false negatives) of 'member if score >= thr' for each threshold."""
    neg = np.sort(scores[~labels])
    pos = np.sort(scores[labels])
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")
    fn = np.searchsorted(pos, thresholds, side="left")
    return fp, fn


def _best_threshold(scores: np.ndarray, labels: np.ndarray, delta: float, alpha: float) -> float:
    """The threshold whose Clopper-Pearson bound is largest on these samples."""
    thresholds = np.unique(scores)
    fp, fn = _error_counts(scores, labels, thresholds)
    b = _bound(clopper_pearson_upper(fp, int((~labels).sum()), alpha / 2),
               clopper_pearson_upper(fn, int(labels.sum()), alpha / 2), delta)
    return float(thresholds[int(np.argmax(b))])


@dataclass(frozen=True)
class AuditBound:
    epsilon_lb: float
    threshold: float
    fpr_upper: float
    fnr_upper: float
    n_eval: int
    confidence: float

    def to_dict(self) -> dict:
        return {"epsilon_lb": self.epsilon_lb, "threshold": self.threshold, "fpr_upper": self.fpr_upper,
                "fnr_upper": self.fnr_upper, "n_eval": self.n_eval, "confidence": self.confidence}


def epsilon_lower_bound(scores: np.ndarray, labels: np.ndarray, *, delta: float, confidence: float = 0.95,
                        n_tests: int = 1, seed: int = 0) -> AuditBound:
    """A lower bound on epsilon, holding with probability >= ``confidence`` / Bonferroni over
    ``n_tests``, from membership scores (higher = member) and labels (1 member, 0 non-member)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    alpha = (1 - confidence) / n_tests
    rng = np.random.default_rng(seed)
    sel = np.zeros(len(scores), dtype=bool)
    for cls in (True, False):                      # stratified halves
        idx = np.flatnonzero(labels == cls)
        sel[rng.permutation(idx)[: len(idx) // 2]] = True
    ev = ~sel
    thr = _best_threshold(scores[sel], labels[sel], delta, alpha)
    flagged = scores[ev] >= thr
    y = labels[ev]
    fpr_hi = clopper_pearson_upper(int((flagged & ~y).sum()), int((~y).sum()), alpha / 2)
    fnr_hi = clopper_pearson_upper(int((~flagged & y).sum()), int(y.sum()), alpha / 2)
    return AuditBound(_bound(fpr_hi, fnr_hi, delta), thr, fpr_hi, fnr_hi, int(ev.sum()), 1 - alpha)


def audit_verdict(epsilon_lb: float, claimed_epsilon: float | None) -> bool | None:
    """True = failed audit (the bound exceeds the claim); None where nothing is claimed (no DP)."""
    if claimed_epsilon is None:
        return None
    return bool(epsilon_lb > claimed_epsilon)
