"""Run a scenario's attacks on a finished run and record what they recovered.

This is the referee, not an adversary: it holds the ground truth (the partition, the canaries, the
client's true images), hands each attack only what its threat model lets it observe, and turns the
answers into metrics. Written into the run folder:

    attacks.json        per-attack metrics, the audit, the budget used
    attack_scores.npz   raw scores and labels per membership attack (``<attack>_scores``,
                        ``<attack>_labels``; canary sets as ``<attack>_canary_*``), 1 = member
    roc.png             ROC curves, log-log (LiRA convention)
    inversion.png       true images (top row) against their reconstructions, one row per update kind and attacker

and the leaderboard's attack columns are returned for metrics.json.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from attacks.audit import audit_verdict, epsilon_lower_bound
from attacks.base import BUDGETS, AttackBudget, get_mia, mia_metrics, roc_curve
from benchmark.rundir import write_atomic
from benchmark.seeding import derive_seed
from privacy.modes import get_dp_mode

AUDIT_CONFIDENCE = 0.95
DEFAULT_AUDIT_DELTA = 1e-5   # rows without DP claim nothing; their bound is still shown at this delta


def _seed(*parts) -> int:
    return derive_seed(*parts)


def membership_candidates(members: np.ndarray, nonmembers: np.ndarray, limit: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A balanced, seeded choice of member and non-member indices: n = min(|M|, |N|, limit) each."""
    n = min(len(members), len(nonmembers), limit)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(members, n, replace=False)), np.sort(rng.choice(nonmembers, n, replace=False))


def run_attacks(scenario, seed: int, model: torch.nn.Module, fed, privacy: dict, out_dir: Path, *,
                device: str, budget: AttackBudget | None = None) -> dict:
    """Every attack the scenario lists; writes the files above into ``out_dir``; returns the
    leaderboard columns (``mia_*``, ``inversion_*``, ``epsilon_empirical_lb``, ``audit_failed``)."""
    from benchmark.model import make_scheduler, to_model_range

    if not scenario.attacks:
        return {}
    budget = budget or BUDGETS[scenario.scale]
    sched = make_scheduler(scenario.num_train_timesteps)
    model = model.to(device).eval()
    ds = fed.dataset
    conditional = scenario.class_conditional
    record: dict = {"budget": budget.to_dict(), "mia": {}, "canaries": {}}
    arrays: dict[str, np.ndarray] = {}
    columns: dict = {}

    def candidates(idx_mem: np.ndarray, idx_non: np.ndarray):
        """One candidate set as the attacks see it (images, class labels) and its ground truth."""
        idx = np.concatenate([idx_mem, idx_non])
        x = to_model_range(ds.images[idx]).to(device)
        y = torch.as_tensor(ds.labels[idx], device=device) if conditional else None
        return x, y, np.r_[np.ones(len(idx_mem), np.int64), np.zeros(len(idx_non), np.int64)]

    def score(name: str, cand, tag: str) -> np.ndarray:
        gen = torch.Generator(device=device).manual_seed(_seed("mia", name, tag, seed))
        return get_mia(name).score(model, sched, cand[0], cand[1], budget=budget, generator=gen)

    # Membership inference ------------------------------------------------------------------------
    mias = [a for a in scenario.attacks if a.startswith("mia-")]
    canary_members = set(fed.canary_members.tolist())
    members = np.array([i for i in fed.partition.members() if i not in canary_members], dtype=np.int64)
    mem, non = membership_candidates(members, fed.partition.heldout(), budget.mia_max_candidates,
                                     _seed("mia-candidates", seed))
    natural = candidates(mem, non) if mias else None
    canary = candidates(fed.canary_members, fed.canary_nonmembers) if mias and len(fed.canary_members) else None
    sets = []
    for name in mias:
        key = name.replace("-", "_")
        scores, labels = score(name, natural, "natural"), natural[2]
        arrays[f"{key}_scores"], arrays[f"{key}_labels"] = scores, labels
        record["mia"][name] = mia_metrics(scores, labels)
        sets.append((name, "natural", scores, labels))
        if canary is not None:
            cs, cl = score(name, canary, "canary"), canary[2]
            arrays[f"{key}_canary_scores"], arrays[f"{key}_canary_labels"] = cs, cl
            record["canaries"][name] = mia_metrics(cs, cl)
            sets.append((name, "canary", cs, cl))

    if mias:
        best = max(mias, key=lambda a: (record["mia"][a]["auc"], a))
        m = record["mia"][best]
        columns |= {"mia_auc": m["auc"], "mia_tpr_at_1pct_fpr": m["tpr_at_1pct_fpr"],
                    "mia_tpr_at_0_1pct_fpr": m["tpr_at_0_1pct_fpr"], "mia_min_fpr": m["min_fpr"],
                    "mia_best_attack": best, "mia_n_candidates": m["n_members"] + m["n_nonmembers"]}
        # The audit: every (attack, candidate set) is one test; Bonferroni keeps the max at 95 %.
        claimed = privacy.get("epsilon")  # None where the run claims no DP
        delta = scenario.delta if scenario.delta is not None else DEFAULT_AUDIT_DELTA
        bounds = []
        for name, tag, scores, labels in sets:
            b = epsilon_lower_bound(scores, labels, delta=delta, confidence=AUDIT_CONFIDENCE,
                                    n_tests=len(sets), seed=_seed("audit-split", name, tag, seed))
            (record["mia"] if tag == "natural" else record["canaries"])[name]["epsilon_lb"] = b.epsilon_lb
            (record["mia"] if tag == "natural" else record["canaries"])[name]["audit"] = b.to_dict()
            bounds.append((b.epsilon_lb, name, tag))
        lb, by, tag = max(bounds)
        failed = audit_verdict(lb, claimed)
        record["audit"] = {"epsilon_empirical_lb": lb, "attack": by, "candidates": tag, "delta": delta,
                           "claimed_epsilon": claimed, "audit_failed": failed, "confidence": AUDIT_CONFIDENCE,
                           "n_tests": len(sets)}
        columns |= {"epsilon_empirical_lb": lb, "audit_failed": failed}
        _roc_png(record, arrays, mias, out_dir / "roc.png", title=f"{scenario.name} seed {seed}")

    # Gradient inversion --------------------------------------------------------------------------
    if "inversion" in scenario.attacks:
        inv = _run_inversion(scenario, seed, model, sched, fed, privacy, budget, device, out_dir)
        record["inversion"] = inv
        columns |= {"inversion_psnr": inv["gradient"]["psnr"], "inversion_ssim": inv["gradient"]["ssim"],
                    "inversion_fedavg_psnr": inv.get("fedavg", {}).get("psnr"),
                    "inversion_fedavg_ssim": inv.get("fedavg", {}).get("ssim")}

    if arrays:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        write_atomic(out_dir / "attack_scores.npz", buf.getvalue())
    write_atomic(out_dir / "attacks.json", json.dumps(record, indent=2, sort_keys=True, default=float) + "\n")
    return columns


def observed_dp(scenario, privacy: dict) -> dict:
    """What DP the client applies to the update the server sees (see attacks.inversion)."""
    mode = get_dp_mode(scenario.dp_mode)
    if mode.clients_run_dpsgd:
        return {"clip": float(privacy["max_grad_norm"]), "noise_multiplier": float(privacy["noise_multiplier"])}
    if mode.server_adds_noise and scenario.central_clipping == "client":
        return {"clip": float(privacy["max_grad_norm"]), "noise_multiplier": 0.0, "clip_whole_update": True}
    return {"clip": None, "noise_multiplier": 0.0}


def _run_inversion(scenario, seed, model, sched, fed, privacy, budget, device, out_dir) -> dict:
    from attacks import inversion as inv
    from benchmark.model import to_model_range
    from benchmark.rundir import sample_grid_png

    ds = fed.dataset
    split = fed.partition.clients[0]
    rng = np.random.default_rng(_seed("inversion-victims", seed))
    victims = np.sort(rng.choice(split.train_idx, min(budget.inversion_batch, len(split.train_idx)), replace=False))
    truth = ds.images[victims]
    x0 = to_model_range(truth).to(device)
    y = torch.as_tensor(ds.labels[victims], device=device) if scenario.class_conditional else None
    dp = observed_dp(scenario, privacy)
    out: dict = {"victims": victims.tolist(), "client": 0, "observed": dp, "lr": 1e-2}
    rows = [truth]
    for kind in budget.inversion_kinds:
        gen = torch.Generator(device=device).manual_seed(_seed("inversion-client", kind, seed))
        update = inv.client_update(
            model, sched, x0, y, kind=kind, local_steps=budget.inversion_local_steps, lr=out["lr"],
            clip=dp["clip"], noise_multiplier=dp["noise_multiplier"], generator=gen,
            clip_whole_update=dp.get("clip_whole_update", False))
        # The first attacker listed fills out[kind] (the leaderboard's columns); others out["kind-randomness"].
        for i, randomness in enumerate(budget.inversion_randomness):
            recon, cos = inv.invert(
                model, sched, update, shape=tuple(truth.shape[1:]), budget=budget, randomness=randomness,
                generator=torch.Generator(device=device).manual_seed(_seed("inversion-attack", kind, randomness, seed)),
                device=device)
            out[kind if i == 0 else f"{kind}-{randomness}"] = inv.match_scores(truth, recon) | {
                "batch_size": len(victims), "update_cosine": cos, "local_steps": update.local_steps,
                "randomness": randomness}
            rows.append(recon)
    tmp = out_dir / "inversion.png"
    sample_grid_png(np.concatenate(rows), tmp, ncol=len(victims))
    return out


def _roc_png(record: dict, arrays: dict, mias: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=120)
    floor = None
    for name in mias:
        key = name.replace("-", "_")
        fpr, tpr, _ = roc_curve(arrays[f"{key}_scores"], arrays[f"{key}_labels"])
        floor = 1.0 / max(1, record["mia"][name]["n_nonmembers"])
        ax.plot(np.maximum(fpr, floor / 2), np.maximum(tpr, floor / 2),
                label=f"{name} (AUC {record['mia'][name]['auc']:.3f})")
    lim = (floor or 1e-3) / 2
    ax.plot([lim, 1], [lim, 1], "k:", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(lim, 1), ylim=(lim, 1), xlabel="false positive rate",
           ylabel="true positive rate", title=title)
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
