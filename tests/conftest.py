import os
from pathlib import Path

import pytest

# Ray warns on every start unless told how to treat accelerator env vars.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def flower_task_identity():
    """Flower stamps messages with the process's task identity, which a runtime normally sets."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None


@pytest.fixture
def feddp_cache(tmp_path, monkeypatch):
    """A private FID cache (reference statistics, the Inception link) for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDDP_CACHE", str(cache))
    return cache


def write_fake_run(root, scenario, seed, *, fid=10.0, metrics=None, attacks=None, complete=True, env=None):
    """A run folder as benchmark.runner writes it (every RUN_FILES entry), without training.

    ``metrics`` updates the default metrics.json; ``attacks`` = {attack name: member score shift}
    also writes attacks.json, attack_scores.npz, roc.png and inversion.png as the attacks do.
    metrics.json goes through the runner's own check (:func:`benchmark.schema.check_metrics`), so a
    fake run cannot hold a key, a type or a gap that a real run would be refused for.
    """
    import json

    import numpy as np
    from PIL import Image

    from benchmark.rundir import RUN_FILES, run_dir
    from benchmark.schema import check_metrics

    path = run_dir(root, scenario, seed)
    path.mkdir(parents=True)
    (path / "scenario.json").write_text(json.dumps(scenario.to_dict() | {"hash": scenario.hash, "seed": seed}))
    m = {"fid": fid, "kid": fid / 1000, "fid_floor": 2.0, "fid_impl": "impl-x", "fid_n_samples": 100, "fid_n_real": 100,
         "fid_reference": "fake-test-n100", "train_s": 2.0, "sample_s": 0.5, "fid_s": 0.5, "final_train_loss": 0.1,
         "dp_mode": scenario.dp_mode, "epsilon": None, "delta": None, "accountant": None, "noise_multiplier": None,
         "max_grad_norm": None, "sample_rate": None}
    if scenario.dp_mode != "none":
        m |= {"epsilon": scenario.target_epsilon * 0.99, "delta": scenario.delta, "accountant": "rdp",
              "noise_multiplier": 1.5, "max_grad_norm": 1.0, "sample_rate": 0.125,
              "epsilon_target": scenario.target_epsilon}
    (path / "environment.json").write_text(json.dumps(env or {
        "device_name": "cpu", "git_sha": "abc", "torch": "2.14.1", "opacus": "1.6.0", "flwr": "1.42.0",
        "diffusers": "0.42.1", "date": f"2026-01-0{seed + 1}T00:00:00+00:00"}))
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 255, size=(30, 60), dtype=np.uint8)
    Image.fromarray(grid, mode="L").save(path / "samples.png")
    if attacks:
        mia, arrays = {}, {}
        for name, shift in attacks.items():
            scores = np.r_[rng.normal(shift, 1, 200), rng.normal(0, 1, 200)]
            labels = np.r_[np.ones(200, int), np.zeros(200, int)]
            auc = float(np.mean(scores[labels == 1][:, None] > scores[labels == 0][None, :]))
            mia[name] = {"auc": auc, "tpr_at_1pct_fpr": 0.05 + shift / 10, "tpr_at_0_1pct_fpr": shift / 20,
                         "min_fpr": 0.005, "n_members": 200, "n_nonmembers": 200, "epsilon_lb": shift,
                         "budget": {}}
            key = name.replace("-", "_")
            arrays[f"{key}_scores"], arrays[f"{key}_labels"] = scores, labels
        best = max(mia, key=lambda k: mia[k]["auc"])
        m |= {"mia_auc": mia[best]["auc"], "mia_tpr_at_1pct_fpr": mia[best]["tpr_at_1pct_fpr"],
              "mia_tpr_at_0_1pct_fpr": mia[best]["tpr_at_0_1pct_fpr"], "mia_best_attack": best,
              "inversion_psnr": 12.0 + seed, "inversion_ssim": 0.3, "epsilon_empirical_lb": mia[best]["epsilon_lb"],
              "audit_failed": None if scenario.dp_mode == "none" else False}
        audit = {"epsilon_empirical_lb": m["epsilon_empirical_lb"], "attack": best, "audit_failed": m["audit_failed"]}
        if not {"epsilon_empirical_lb", "audit_failed"} & set(metrics or {}):  # else: a record without evidence
            from attacks.audit import audit_verdict, epsilon_lower_bound, record_bound

            delta = scenario.delta or 1e-5
            tests = [{"attack": a, "candidates": "natural", "evidence": epsilon_lower_bound(
                arrays[f"{a.replace('-', '_')}_scores"], arrays[f"{a.replace('-', '_')}_labels"], delta=delta,
                n_tests=len(mia)).evidence} for a in mia]
            lb, ceiling, _ = record_bound([t["evidence"] for t in tests], delta=delta, alpha=0.05)
            claim = m["epsilon"]
            verdict = audit_verdict(lb, ceiling, claim)
            m |= {"epsilon_empirical_lb": lb, "audit_ceiling": ceiling, "epsilon_audited": claim,
                  "audit_unit": None if claim is None else "image", "audit_verdict": verdict,
                  "audit_failed": None if verdict is None else verdict == "failed"}
            audit = {k: m[k] for k in ("epsilon_empirical_lb", "audit_ceiling", "epsilon_audited", "audit_unit",
                                       "audit_verdict", "audit_failed")} | {"attack": best, "delta": delta,
                                                                            "tests": tests}
        # A DP run's white-box canaries (the mechanism's own, attacks.evaluate): their epsilon estimate.
        whitebox = {} if scenario.dp_mode == "none" else {"gradient-canaries": {
            "unit": "image", "epsilon_estimate": 1.0 + seed, "auc": 0.5}}
        (path / "attacks.json").write_text(json.dumps({
            "mia": mia, "inversion": {"psnr": m["inversion_psnr"], "ssim": 0.3}, "audit": audit,
            "gradient_canaries": whitebox}))
        np.savez(path / "attack_scores.npz", **arrays)
        for f in ("roc.png", "inversion.png"):
            (path / f).write_bytes((path / "samples.png").read_bytes())
    m |= metrics or {}
    (path / "metrics.json").write_text(json.dumps(check_metrics(m)))
    for f in RUN_FILES:
        if not (path / f).exists() and (complete or f != "DONE"):
            (path / f).write_text("")
    return path


@pytest.fixture
def fake_run():
    return write_fake_run
