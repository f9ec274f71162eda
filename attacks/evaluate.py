"""Run a scenario's attacks on a finished run and record what they recovered.

This is the referee, not an adversary: it holds the ground truth (the partition, the canaries, the
client's true images), builds for each attack exactly the observation its threat model names
(``threat_model.observes``: one referee per observation kind, ``REFEREES``), calls
``attack.run(observation, budget, generator)`` and turns the result into metrics. Written into the
run folder:

    attacks.json        per-attack metrics, the audit, the budget used
    attack_scores.npz   raw scores and labels per membership attack (``<attack>_scores``,
                        ``<attack>_labels``; canary sets as ``<attack>_canary_*``), 1 = member
    roc.png             ROC curves, log-log (LiRA convention)
    inversion.png       true images (top row) against their reconstructions, one row per update kind and attacker

and the leaderboard's attack columns are returned for metrics.json. Every generator is seeded from
the run seed and the attack's name (``derive_seed``), so a run's attack numbers do not depend on
which other attacks ran or in which order.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attacks.audit import (
    DEFAULT_UNIT,
    epsilon_lower_bound,
    evidence_bound,
    evidence_ceiling,
    gaussian_fit_epsilon,
    judge,
    one_run_evidence,
    one_run_fdp_evidence,
    unit_bounds,
)
from attacks.base import (
    CLIENT_UPDATE,
    FINAL_MODEL,
    Attack,
    AttackBudget,
    AttackError,
    AttackResult,
    ClientUpdateObservation,
    FinalModelObservation,
    ObservedUpdate,
    best_attack,
    draw_roc,
    match_scores,
    mia_metrics,
    roc_curve,
    scale_budget,
)
from attacks.observe import as_seen, client_update
from attacks.registry import get_attack
from benchmark.rundir import write_atomic
from benchmark.seeding import derive_seed
from privacy.mechanisms import as_canaries, get_mechanism

AUDIT_CONFIDENCE = 0.95
DEFAULT_AUDIT_DELTA = 1e-5   # rows without DP claim nothing; their bound is still shown at this delta
AUDIT_UNIT = DEFAULT_UNIT    # what every membership attack's candidates are (images); white-box canaries name theirs
CLIENT_LR = 1e-2             # the learning rate of the simulated client whose update the server sees


@dataclass(frozen=True)
class Case:
    """One finished run as the referee holds it: the row, the ground truth and what it may hand out."""

    scenario: object
    seed: int
    model: torch.nn.Module
    scheduler: object
    fed: object
    privacy: dict
    budget: AttackBudget
    device: str
    out_dir: Path
    audit_canaries: list = ()   # privacy.mechanisms.Canaries: white-box canaries the mechanism planted

    def generator(self, *parts) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(derive_seed(*parts, self.seed))


def run_attacks(scenario, seed: int, model: torch.nn.Module, fed, privacy: dict, out_dir: Path, *,
                device: str, budget: AttackBudget | None = None, audit_canaries: list = ()) -> dict:
    """Every attack the scenario lists; writes the files above into ``out_dir``; returns the
    leaderboard columns (``mia_*``, ``inversion_*``, ``epsilon_empirical_lb``, ``audit_*``)."""
    from benchmark.model import make_scheduler

    if not scenario.attacks:
        return {}
    budget = budget or scale_budget(scenario.scale)
    case = Case(scenario, seed, model.to(device).eval(), make_scheduler(scenario.num_train_timesteps), fed, privacy,
                budget, device, Path(out_dir), list(audit_canaries))
    attacks = [get_attack(name) for name in scenario.attacks]
    record: dict = {"budget": budget.to_dict(), "mia": {}, "canaries": {}, "gradient_canaries": {},
                    "gradient_canaries_fdp": {}}
    arrays: dict[str, np.ndarray] = {}
    columns: dict = {}
    for kind, referee in REFEREES.items():
        chosen = [a for a in attacks if a.threat_model.observes == kind]
        if chosen:
            columns |= referee(case, chosen, record, arrays)
    if arrays:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        write_atomic(case.out_dir / "attack_scores.npz", buf.getvalue())
    write_atomic(case.out_dir / "attacks.json", json.dumps(record, indent=2, sort_keys=True, default=float) + "\n")
    return columns


# final-model: membership inference and the audit -----------------------------------------------------
def membership_candidates(members: np.ndarray, nonmembers: np.ndarray, limit: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A balanced, seeded choice of member and non-member indices: n = min(|M|, |N|, limit) each."""
    n = min(len(members), len(nonmembers), limit)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(members, n, replace=False)), np.sort(rng.choice(nonmembers, n, replace=False))


def _candidates(case: Case, idx: np.ndarray, truth: np.ndarray) -> tuple[FinalModelObservation, np.ndarray]:
    """One candidate set as the attacks see it (final model, images, class labels) and its ground
    truth (1 = member), in the order given."""
    from benchmark.model import to_model_range

    ds = case.fed.dataset
    x = to_model_range(ds.images[idx]).to(case.device)
    y = torch.as_tensor(ds.labels[idx], device=case.device) if case.scenario.class_conditional else None
    return FinalModelObservation(case.model, case.scheduler, x, y), np.asarray(truth, np.int64)


def _scores(attack: Attack, result: AttackResult, n: int) -> np.ndarray:
    scores = None if result.scores is None else np.asarray(result.scores)
    if scores is None or scores.shape != (n,):
        got = "none" if scores is None else f"shape {scores.shape}"
        raise AttackError(f"attack {attack.name!r} must return one score per candidate ({n}), got {got}")
    return scores


def audited_epsilon(scenario, privacy: dict) -> float | None:
    """The epsilon that applies to what the membership audit tests (one image), from the row's
    mechanism: the claim of a sample-level row, the image-level epsilon of a client-level one;
    None without a claim."""
    return get_mechanism(scenario.dp_mode).audited_epsilon(scenario, privacy)


def audit_claims(scenario, privacy: dict) -> dict[str, float]:
    """unit -> the epsilon the audit holds that unit's tests to (the mechanism's own claims)."""
    return get_mechanism(scenario.dp_mode).audit_claims(scenario, privacy)


def audit_tests(tested: list[tuple], *, delta: float, seed: int, shapes: dict | None = None,
                sides: dict | None = None) -> list[dict]:
    """One test per (attack, candidate set, scores, labels, unit) of ``tested``: the natural candidates by the half
    split (at the run's Bonferroni level, which only picks the threshold), the canaries by one-run
    auditing, the white-box canaries also by the f-DP one-run bound (``gradient-canary-fdp``, with
    the shape of their mechanism from ``shapes``: name -> sample_rate, steps), each white-box set
    with its guess design (``sides``: name -> "both" or "in", default both). Each test keeps its
    unit (what its canaries stand for; :mod:`attacks.audit`, "Units")."""
    tests = []
    alpha = (1 - AUDIT_CONFIDENCE) / len(tested)
    for name, tag, scores, labels, unit in tested:
        side = (sides or {}).get(name, "both") if tag.startswith("gradient-canary") else "both"
        if tag == "gradient-canary-fdp":
            evidence = one_run_fdp_evidence(scores, labels, **shapes[name], sides=side,
                                            seed=derive_seed("audit-ties", name, "gradient-canary", seed))
        elif tag != "natural":   # planted canaries, in by a fair coin: one-run auditing
            evidence = one_run_evidence(scores, labels, sides=side, seed=derive_seed("audit-ties", name, tag, seed))
        else:
            evidence = epsilon_lower_bound(scores, labels, delta=delta, confidence=AUDIT_CONFIDENCE,
                                           n_tests=len(tested),
                                           seed=derive_seed("audit-split", name, tag, seed)).evidence
        tests.append({"attack": name, "candidates": tag, "unit": unit, "evidence": evidence,
                      "epsilon_lb": evidence_bound(evidence, delta=delta, alpha=alpha),
                      "ceiling": evidence_ceiling(evidence, delta=delta, alpha=alpha)})
    return tests


def audit_record(tests: list[dict], *, delta: float, claimed: float | None, claims: dict[str, float]) -> dict:
    """attacks.json's ``audit``: the run's bound and ceiling at AUDIT_CONFIDENCE (Bonferroni over its
    tests), each unit held to its own claim (``claims``: unit -> epsilon, :func:`audit_claims`), the
    headline unit's bound, ceiling and claim, the verdict and every test's evidence."""
    j = judge(unit_bounds(tests, delta=delta, alpha=1 - AUDIT_CONFIDENCE), claims)
    return {"epsilon_empirical_lb": j.bound, "audit_ceiling": j.ceiling, "attack": tests[j.index]["attack"],
            "candidates": tests[j.index]["candidates"], "delta": delta, "claimed_epsilon": claimed,
            "epsilon_audited": j.claim, "audit_unit": j.unit if j.claim is not None else None,
            "claims": claims, "failed_units": list(j.failed_units),
            "audit_verdict": j.verdict, "audit_failed": None if j.verdict is None else j.verdict == "failed",
            "confidence": AUDIT_CONFIDENCE, "n_tests": len(tests), "tests": tests}


def _membership(case: Case, attacks: list[Attack], record: dict, arrays: dict) -> dict:
    """Score the natural candidates (members not planted, held-out images) and the canaries; audit."""
    fed, seed = case.fed, case.seed
    canary_members = set(fed.canary_members.tolist())
    members = np.array([i for i in fed.partition.members() if i not in canary_members], dtype=np.int64)
    mem, non = membership_candidates(members, fed.partition.heldout(), case.budget.mia_max_candidates,
                                     derive_seed("mia-candidates", seed))
    sets = {"natural": _candidates(case, np.r_[mem, non], np.r_[np.ones(len(mem)), np.zeros(len(non))])}
    canaries = np.sort(np.r_[fed.canary_members, fed.canary_nonmembers]).astype(np.int64)
    if len(canaries):
        # In canary order: the candidates' order says nothing about which were included.
        sets["canary"] = _candidates(case, canaries, np.isin(canaries, fed.canary_members))
    section = {"natural": record["mia"], "canary": record["canaries"], "gradient-canary": record["gradient_canaries"],
               "gradient-canary-fdp": record["gradient_canaries_fdp"]}
    tested = []
    for attack in attacks:
        key = attack.name.replace("-", "_")
        for tag, (observation, truth) in sets.items():
            result = attack.run(observation, case.budget, case.generator("mia", attack.name, tag))
            scores = _scores(attack, result, len(truth))
            stem = key if tag == "natural" else f"{key}_canary"
            arrays[f"{stem}_scores"], arrays[f"{stem}_labels"] = scores, truth
            section[tag][attack.name] = mia_metrics(scores, truth)
            tested.append((attack.name, tag, scores, truth, AUDIT_UNIT))
    delta = case.scenario.delta if case.scenario.delta is not None else DEFAULT_AUDIT_DELTA
    shapes, sides = {}, {}
    for c in map(as_canaries, case.audit_canaries):  # white-box: the scores the mechanism recorded
        scores, included = np.asarray(c.scores, np.float64), np.asarray(c.included).astype(bool)
        arrays[f"{c.name.replace('-', '_')}_gradient_canary_scores"] = scores
        arrays[f"{c.name.replace('-', '_')}_gradient_canary_labels"] = included
        record["gradient_canaries"][c.name] = mia_metrics(scores, included) | {
            "unit": c.unit, "epsilon_estimate": gaussian_fit_epsilon(scores[included], scores[~included],
                                                                     delta=delta)}
        statistic = scores if c.audit_scores is None else np.asarray(c.audit_scores, np.float64)
        tested.append((c.name, "gradient-canary", statistic, included, c.unit))
        sides[c.name] = c.sides
        if c.shape:  # the canaries' mechanism is known: the f-DP bound too
            shapes[c.name] = dict(c.shape)
            record["gradient_canaries_fdp"][c.name] = dict(record["gradient_canaries"][c.name])
            tested.append((c.name, "gradient-canary-fdp", statistic, included, c.unit))

    best = best_attack({a.name: record["mia"][a.name]["auc"] for a in attacks})
    m = record["mia"][best]
    columns = {"mia_auc": m["auc"], "mia_tpr_at_1pct_fpr": m["tpr_at_1pct_fpr"],
               "mia_tpr_at_0_1pct_fpr": m["tpr_at_0_1pct_fpr"], "mia_min_fpr": m["min_fpr"],
               "mia_best_attack": best, "mia_n_candidates": m["n_members"] + m["n_nonmembers"]}
    # The audit: every (attack, candidate set) is one test; Bonferroni keeps the max at 95 %.
    tests = audit_tests(tested, delta=delta, seed=seed, shapes=shapes, sides=sides)
    for t in tests:
        section[t["candidates"]][t["attack"]]["epsilon_lb"] = t["epsilon_lb"]
        section[t["candidates"]][t["attack"]]["audit"] = {k: t[k] for k in ("epsilon_lb", "ceiling", "evidence")}
    record["audit"] = audit_record(tests, delta=delta, claimed=case.privacy.get("epsilon"),
                                   claims=audit_claims(case.scenario, case.privacy))
    _roc_png(record, arrays, [a.name for a in attacks], case.out_dir / "roc.png",
             title=f"{case.scenario.name} seed {seed}")
    a = record["audit"]
    return columns | {k: a[k] for k in ("epsilon_empirical_lb", "audit_ceiling", "epsilon_audited", "audit_unit",
                                        "audit_verdict", "audit_failed")}


def _roc_png(record: dict, arrays: dict, names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmark.rundir import write_png

    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=120)
    curves = []
    for name in names:
        key = name.replace("-", "_")
        fpr, tpr, _ = roc_curve(arrays[f"{key}_scores"], arrays[f"{key}_labels"])
        curves.append((f"{name} (AUC {record['mia'][name]['auc']:.3f})", fpr, tpr))
    draw_roc(ax, curves, record["mia"][names[-1]]["n_nonmembers"])
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    write_png(path, fig)


# client-update: what one client's update gives away to the server -------------------------------------
def observed_dp(scenario, privacy: dict) -> dict:
    """What DP the client applies to the update the server sees (see attacks.observe), as the row's
    mechanism says."""
    return get_mechanism(scenario.dp_mode).attacker_view(scenario, privacy)


def server_view(scenario, privacy: dict, model, scheduler, x0: torch.Tensor, labels: torch.Tensor | None, *,
                kind: str, local_steps: int, generator: torch.Generator, lr: float = CLIENT_LR) -> ObservedUpdate:
    """The update of a client with images ``x0`` as the server receives it under the row's DP mode."""
    dp = observed_dp(scenario, privacy)
    return client_update(model, scheduler, x0, labels, kind=kind, local_steps=local_steps, lr=lr, clip=dp["clip"],
                         noise_multiplier=dp["noise_multiplier"], clip_whole_update=dp.get("clip_whole_update", False),
                         generator=generator)


def _reconstructions(attack: Attack, result: AttackResult, shape: tuple[int, ...]) -> np.ndarray:
    recon = None if result.reconstructions is None else np.asarray(result.reconstructions)
    if recon is None or recon.dtype != np.uint8 or recon.ndim != 4 or recon.shape[1:] != shape:
        got = "none" if recon is None else f"{recon.dtype} {recon.shape}"
        want = ", ".join(map(str, shape))
        raise AttackError(f"attack {attack.name!r} must return uint8 images of shape (N, {want}), got {got}")
    return recon


def _inversion(case: Case, attacks: list[Attack], record: dict, arrays: dict) -> dict:
    """Client 0's update on a few of its images, as the server sees it: each update kind, each attacker."""
    from benchmark.model import to_model_range

    ds, budget, seed = case.fed.dataset, case.budget, case.seed
    split = case.fed.partition.clients[0]
    rng = np.random.default_rng(derive_seed("inversion-victims", seed))
    victims = np.sort(rng.choice(split.train_idx, min(budget.inversion_batch, len(split.train_idx)), replace=False))
    truth = ds.images[victims]
    x0 = to_model_range(truth).to(case.device)
    y = torch.as_tensor(ds.labels[victims], device=case.device) if case.scenario.class_conditional else None
    updates = {kind: server_view(case.scenario, case.privacy, case.model, case.scheduler, x0, y, kind=kind,
                                 local_steps=budget.inversion_local_steps,
                                 generator=case.generator("inversion-client", kind))
               for kind in budget.inversion_kinds}
    rows = [("true images", truth)]
    for attack in attacks:
        out: dict = {"victims": victims.tolist(), "client": 0, "observed": observed_dp(case.scenario, case.privacy),
                     "lr": CLIENT_LR}
        for kind, update in updates.items():
            # The first attacker listed fills out[kind] (the leaderboard's columns); others out["kind-randomness"].
            for i, randomness in enumerate(budget.inversion_randomness):
                observation = ClientUpdateObservation(case.model, case.scheduler, as_seen(update, randomness),
                                                      tuple(truth.shape[1:]))
                result = attack.run(observation, budget, case.generator("inversion-attack", kind, randomness))
                recon = _reconstructions(attack, result, truth.shape[1:])
                out[kind if i == 0 else f"{kind}-{randomness}"] = match_scores(truth, recon) | {
                    "batch_size": len(victims), "update_cosine": result.stats.get("update_cosine"),
                    "local_steps": update.local_steps, "randomness": randomness}
                m = out[kind if i == 0 else f"{kind}-{randomness}"]
                rows.append((f"{attack.name}\n{kind}, {randomness} randomness\nPSNR {m['psnr']:.1f} dB, "
                             f"SSIM {m['ssim']:.2f}", recon))
        record[attack.name] = out
    inversion_png(rows, [f"image {v}" for v in victims], case.out_dir / "inversion.png",
                  title=f"{case.scenario.name} seed {seed}: gradient inversion of client 0's update "
                        f"as the server sees it (dp {case.scenario.dp_mode})")
    first = budget.inversion_kinds[0]
    inv = record[best_attack({a.name: record[a.name][first]["psnr"] for a in attacks})]
    return {"inversion_psnr": inv.get("gradient", {}).get("psnr"),
            "inversion_ssim": inv.get("gradient", {}).get("ssim"),
            "inversion_fedavg_psnr": inv.get("fedavg", {}).get("psnr"),
            "inversion_fedavg_ssim": inv.get("fedavg", {}).get("ssim")}


def inversion_png(rows: list[tuple[str, np.ndarray]], columns: list[str], path: Path, title: str = "") -> None:
    """The true images (top row) against each attacker's reconstructions, one labelled row each,
    upscaled without smoothing (nearest neighbour) so that 28-pixel images are legible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmark.rundir import write_png

    ncol = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.3 * ncol + 2.4, 1.35 * len(rows) + 0.5), squeeze=False)
    for i, (label, images) in enumerate(rows):
        for j in range(ncol):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                img = images[j].transpose(1, 2, 0)
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255,
                          interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0 and j < len(columns):
                ax.set_title(columns[j], fontsize=8)
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7, labelpad=6)
    if title:
        fig.suptitle(title, fontsize=8)
    write_png(path, fig, dpi=100, bbox_inches="tight")


# One referee per observation kind (attacks.base.OBSERVATION_KINDS), run in this order.
REFEREES: dict[str, Callable[[Case, list[Attack], dict, dict], dict]] = {
    FINAL_MODEL: _membership,
    CLIENT_UPDATE: _inversion,
}
