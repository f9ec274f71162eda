"""The attack protocol: threat models, observations, results, budgets, the metrics of both result
kinds (ROC for scores, PSNR/SSIM for reconstructions), the one ROC drawing, and shared helpers.

Every attack is one object with one method of one shape (breaching's ``reconstruct(payload,
shared) -> (reconstruction, stats)``)::

    attack.run(observation, budget, generator) -> AttackResult

The *case* is declared apart from the attack: an attack's ``ThreatModel`` names, in
``observes``, the kind of observation the adversary gets, and the referee (``attacks.evaluate``)
builds exactly that observation from the run and nothing more. It holds the ground truth (the
partition, the canaries, the client's true images) and turns the result into metrics; the attack
never sees the partition, the run folder or other parties' data. Two kinds exist:

* ``final-model`` (:class:`FinalModelObservation`): the final global model, white box (weights,
  architecture, the training noise schedule) and candidate images with their class labels. The
  result carries ``scores``, one per candidate, **higher = more likely a member**.
* ``client-update`` (:class:`ClientUpdateObservation`): the model the server sent and one
  client's update as the server receives it under the row's DP mode (``attacks.observe``). The
  result carries ``reconstructions`` (uint8 NCHW).

ROC metrics follow the LiRA convention (Carlini et al. 2022): TPR at a fixed low FPR, on log-log
axes. ``tpr_at_fpr(x)`` is the largest TPR of any threshold whose empirical FPR is <= x; with n
non-members the smallest FPR the sample resolves is 1/n, so a target below it reports the TPR at
zero false positives (``min_fpr`` says which). :func:`draw_roc` is the one ROC drawing (a run's
``roc.png`` and the report's) and :func:`best_attack` the one rule for a row's best attack.

This module imports neither torch nor an attack, so the registry (``attacks.registry``), the
report and ``benchmark.scenarios`` read it without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch


class AttackError(ValueError):
    """An attack cannot run as asked (one-line message)."""


# What a client-update observation holds (the victim's side, which builds it: attacks.observe) ------
@dataclass
class ClientRandomness:
    """The client's diffusion randomness: noise ``(K, B, C, H, W)`` and timesteps ``(K, B)``, one
    row per local step. What a server that can replay the client's training seed knows."""

    noise: torch.Tensor
    timesteps: torch.Tensor


@dataclass
class ObservedUpdate:
    """What the server receives from the client (plus the protocol facts it knows: batch size,
    local steps, learning rate, labels, and the clipping bound ``clip`` if the protocol clips).
    ``replayed`` is the client's diffusion randomness, there only where the server can replay it."""

    kind: str
    tensors: dict[str, torch.Tensor]
    batch_size: int
    local_steps: int
    lr: float
    labels: torch.Tensor | None
    clip: float | None = None
    replayed: ClientRandomness | None = None


# What an adversary observes -----------------------------------------------------------------------
FINAL_MODEL = "final-model"
CLIENT_UPDATE = "client-update"
OBSERVATION_KINDS = (FINAL_MODEL, CLIENT_UPDATE)


@dataclass(frozen=True)
class ThreatModel:
    """Who the adversary is, what it observes, what it wants (also written in each attack's docstring).

    ``observes`` is machine-readable: the observation kind the referee builds (``OBSERVATION_KINDS``);
    ``sees`` says the same in words, with the protocol facts the adversary is assumed to know."""

    adversary: str
    observes: str
    sees: str
    goal: str

    def __post_init__(self) -> None:
        if self.observes not in OBSERVATION_KINDS:
            raise AttackError(f"unknown observation kind {self.observes!r} (known: {', '.join(OBSERVATION_KINDS)})")


MEMBERSHIP_THREAT = ThreatModel(
    adversary="anyone holding the final global model (a party, the server, or a model user)",
    observes=FINAL_MODEL,
    sees="the final global model, white box (weights, architecture, noise schedule), and a "
         "candidate image with its class label",
    goal="decide whether the candidate was in some client's training data",
)

CURIOUS_SERVER_THREAT = ThreatModel(
    adversary="the honest-but-curious server",
    observes=CLIENT_UPDATE,
    sees="one client's update (a FedSGD gradient or a multi-step FedAvg delta), after the "
         "client's own DP steps, before any server-side noise; the model it sent; batch size, "
         "local steps, learning rate and class labels; the client's diffusion noise and timesteps "
         "where it can replay the client's seed (the `known` attacker)",
    goal="reconstruct the client's training images",
)


@dataclass(frozen=True)
class FinalModelObservation:
    """``final-model``: the released model and the candidates (images in the model's range [-1, 1])."""

    model: Any
    scheduler: Any
    images: torch.Tensor
    labels: torch.Tensor | None


@dataclass(frozen=True)
class ClientUpdateObservation:
    """``client-update``: the model the server sent, one client's update as the server receives it
    (with the client's replayed diffusion randomness only where the server can replay its seed),
    and the image shape (C, H, W) the protocol fixes."""

    model: Any
    scheduler: Any
    update: ObservedUpdate
    image_shape: tuple[int, int, int]


@dataclass(frozen=True)
class AttackResult:
    """What an attack answers: ``scores`` (final-model: one per candidate, higher = member) or
    ``reconstructions`` (client-update: uint8 NCHW), and ``stats`` about how it went."""

    scores: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    stats: dict = field(default_factory=dict)


class Attack(Protocol):
    """What the registry holds and the referee calls."""

    name: str
    threat_model: ThreatModel
    reference: str

    def run(self, observation: Any, budget: AttackBudget, generator: torch.Generator) -> AttackResult: ...


# How much the adversary spends --------------------------------------------------------------------
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


def scale_budget(scale: str) -> AttackBudget:
    """The attack budget a scale gives its scenarios (``benchmark.scales.Scale.attack_budget``)."""
    from benchmark.scales import SCALES

    return AttackBudget(**SCALES[scale].attack_budget)


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


def best_attack(values: Mapping[str, float]) -> str | None:
    """The attack with the highest value (a membership attack's AUC, an inversion's PSNR); a tie
    goes to the name that sorts last. None where there is none. The one tie rule: the run's
    ``mia_best_attack`` column and the report's best-attack ROC both use it."""
    return max(values, key=lambda name: (values[name], name)) if values else None


def draw_roc(ax, curves: Sequence[tuple[str, np.ndarray, np.ndarray]], n_nonmembers: int) -> None:
    """ROC curves ``(label, fpr, tpr)`` and the chance line on log-log axes (LiRA convention).

    With n non-members the smallest non-zero FPR is ``1/n`` (the floor); FPR 0 (and TPR 0) is drawn
    at half the floor, the axes' lower limit, so a curve that starts at zero false positives is seen
    at the left edge instead of vanishing off a log axis. The caller adds title and legend."""
    lim = 1.0 / max(1, n_nonmembers) / 2
    for label, fpr, tpr in curves:
        ax.plot(np.maximum(fpr, lim), np.maximum(tpr, lim), label=label)
    ax.plot([lim, 1], [lim, 1], "k:", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(lim, 1), ylim=(lim, 1), xlabel="false positive rate",
           ylabel="true positive rate")


# Reconstruction metrics -------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (peak 255)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) of two uint8 CHW images: 11x11 Gaussian window, sigma 1.5, K1=0.01,
    K2=0.03, on [0, 1], averaged over the valid window positions and channels."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(a, dtype=torch.float64)[None] / 255.0
    y = torch.as_tensor(b, dtype=torch.float64)[None] / 255.0
    c = x.shape[1]
    size = min(11, x.shape[-1], x.shape[-2])
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(c, 1, size, size)
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, w, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def match_scores(truth: np.ndarray, recon: np.ndarray) -> dict:
    """Each true image against its best reconstruction (by PSNR); means over the batch. LPIPS is
    not computed: its network weights are a download this benchmark cannot make (a field says so)."""
    ps, ss = [], []
    for t in truth:
        cand = [psnr(t, r) for r in recon]
        j = int(np.argmax(cand))
        ps.append(cand[j])
        ss.append(ssim(t, recon[j]))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "lpips": None,
            "lpips_note": "LPIPS weights are not installed (no downloads); not computed"}


# Shared diffusion helpers ---------------------------------------------------------------------------
def timestep_index(fraction: float, num_train_timesteps: int) -> int:
    return int(min(max(round(fraction * num_train_timesteps), 1), num_train_timesteps - 1))


def batched(fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], x0: torch.Tensor,
            labels: torch.Tensor | None, batch_size: int = 256) -> torch.Tensor:
    import torch

    out = []
    for i in range(0, len(x0), batch_size):
        out.append(fn(x0[i:i + batch_size], None if labels is None else labels[i:i + batch_size]))
    return torch.cat(out)
