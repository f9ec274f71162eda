"""The attack interface: threat models, budgets, a registry, and the ROC metrics every MIA reports.

An attack receives only what its threat model lets the adversary observe. A membership-inference
attack gets the final global model (white box: weights and architecture, the training scheduler)
and candidate images with their class labels; it returns one score per candidate, **higher =
more likely a member**. It never sees the partition, the run folder or other parties' data: the
runner (``attacks.evaluate``) holds the ground truth and turns scores into metrics.

ROC metrics follow the LiRA convention (Carlini et al. 2022): TPR at a fixed low FPR, on log-log
axes. ``tpr_at_fpr(x)`` is the largest TPR of any threshold whose empirical FPR is <= x; with n
non-members the smallest FPR the sample resolves is 1/n, so a target below it reports the TPR at
zero false positives (``min_fpr`` says which).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch


class AttackError(ValueError):
    """An attack cannot run as asked (one-line message)."""


@dataclass(frozen=True)
class ThreatModel:
    """Who the adversary is, what it observes, what it wants (written in each attack's docstring)."""

    adversary: str
    observes: str
    goal: str


@dataclass(frozen=True)
class AttackBudget:
    """How much compute the adversary spends, set by the suite's scale and recorded in every run.

    ``mia_noise_draws`` x ``mia_timesteps`` forward passes per candidate (mia-loss); SecMI's
    inversion timestep and interval; PIA's timestep; gradient inversion's iterations (objective
    evaluations), restarts, batch size, update kinds and attackers (``inversion_randomness``:
    ``known`` replays the client's diffusion noise and timesteps, ``secret`` must search for them;
    the first one listed fills the leaderboard's ``inversion_*`` columns); at most
    ``mia_max_candidates`` members and as many non-members are scored.
    """

    mia_noise_draws: int = 4
    mia_timesteps: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)  # fractions of num_train_timesteps
    mia_max_candidates: int = 500
    secmi_t: float = 0.1          # SecMI: t_sec as a fraction of num_train_timesteps
    secmi_k: float = 0.01         # SecMI: DDIM interval k as a fraction
    pia_t: float = 0.2            # PIA: the single timestep, as a fraction
    inversion_iters: int = 300
    inversion_restarts: int = 1
    inversion_batch: int = 1
    inversion_local_steps: int = 3   # the multi-step FedAvg delta
    inversion_kinds: tuple[str, ...] = ("gradient", "fedavg")
    inversion_randomness: tuple[str, ...] = ("known", "secret")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mia_timesteps"] = list(self.mia_timesteps)
        d["inversion_kinds"] = list(self.inversion_kinds)
        d["inversion_randomness"] = list(self.inversion_randomness)
        return d


BUDGETS: dict[str, AttackBudget] = {
    # A small inversion budget (25 L-BFGS evaluations, known randomness only): the CPU privacy suite
    # must stay within 15 minutes on 2 cores.
    "cpu": AttackBudget(mia_noise_draws=2, mia_max_candidates=128, inversion_iters=25, inversion_local_steps=2,
                        inversion_randomness=("known",)),
    # 1000 objective evaluations for each of the two attackers (known and secret randomness).
    "gpu": AttackBudget(mia_noise_draws=8, mia_max_candidates=2000, inversion_iters=1000,
                        inversion_restarts=2),
}


MEMBERSHIP_THREAT = ThreatModel(
    adversary="anyone holding the final global model (a party, the server, or a model user)",
    observes="the final global model, white box (weights, architecture, noise schedule), and a "
             "candidate image with its class label",
    goal="decide whether the candidate was in some client's training data",
)


@dataclass(frozen=True)
class MembershipAttack:
    """A registered membership-inference attack: ``score(model, scheduler, images, labels, ...)``."""

    name: str
    score: Callable[..., np.ndarray]
    threat_model: ThreatModel
    reference: str


MIA_REGISTRY: dict[str, MembershipAttack] = {}


def register_mia(name: str, *, reference: str, threat_model: ThreatModel = MEMBERSHIP_THREAT):
    """Decorator: register ``fn(model, scheduler, x0, labels, *, budget, generator) -> scores``."""

    def deco(fn):
        if name in MIA_REGISTRY:
            raise ValueError(f"attack {name!r} registered twice")
        MIA_REGISTRY[name] = MembershipAttack(name, fn, threat_model, reference)
        return fn

    return deco


def get_mia(name: str) -> MembershipAttack:
    import attacks.mia_loss  # noqa: F401  (registration)
    import attacks.mia_pia  # noqa: F401
    import attacks.mia_secmi  # noqa: F401

    try:
        return MIA_REGISTRY[name]
    except KeyError:
        raise AttackError(f"unknown membership attack {name!r} (known: {', '.join(sorted(MIA_REGISTRY))})") from None


# ROC metrics --------------------------------------------------------------------------------------
def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for 'member if score >= threshold', thresholds descending, starting
    with +inf (nothing flagged). Ties are one threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise AttackError("scores and labels must be 1-D arrays of the same length")
    if not np.all(np.isfinite(scores)):
        raise AttackError("attack scores contain NaN or Inf")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise AttackError("ROC needs at least one member and one non-member")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    thr = np.r_[np.inf, s[last_of_tie]]
    return fpr, tpr, thr


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(member score > non-member score) + 0.5 P(tie) (Mann-Whitney)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    ranks = rankdata(scores)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, target_fpr: float) -> float:
    """Largest TPR over thresholds with empirical FPR <= target_fpr (LiRA's convention)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(tpr[fpr <= target_fpr + 1e-12].max())


def mia_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    labels = np.asarray(labels).astype(bool)
    n_neg = int((~labels).sum())
    return {
        "auc": auc(scores, labels),
        "tpr_at_1pct_fpr": tpr_at_fpr(scores, labels, 0.01),
        "tpr_at_0_1pct_fpr": tpr_at_fpr(scores, labels, 0.001),
        # The smallest non-zero FPR this many non-members can show; a target below it is read at FPR 0.
        "min_fpr": 1.0 / n_neg,
        "n_members": int(labels.sum()),
        "n_nonmembers": n_neg,
    }


# Shared diffusion helpers ---------------------------------------------------------------------------
def timestep_index(fraction: float, num_train_timesteps: int) -> int:
    return int(min(max(round(fraction * num_train_timesteps), 1), num_train_timesteps - 1))


def batched(fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], x0: torch.Tensor,
            labels: torch.Tensor | None, batch_size: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(x0), batch_size):
        out.append(fn(x0[i:i + batch_size], None if labels is None else labels[i:i + batch_size]))
    return torch.cat(out)
