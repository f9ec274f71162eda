"""Attacks end to end through `bench run` (slow tier): an overfit model is caught, DP at epsilon 1
is not, a mis-accounted run fails the audit loudly, and gradient inversion with and without DP."""

import json
import math

import pandas as pd
import pytest
import torch

from benchmark.cli import main

pytestmark = pytest.mark.slow

# A few dozen images, one client, many epochs: the model memorises its training set.
OVERFIT = """
name = "{name}"
num_clients = 1
clients_per_round = 1
rounds = 1
local_epochs = {epochs}
max_train_images = 24
heldout_fraction = 0.5
batch_size = 24
learning_rate = 5e-3
num_train_timesteps = 100
sample_steps = 2
fid_n_samples = 16
attacks = ["mia-loss", "mia-pia"]
{extra}
"""


def _run(tmp_path, name, epochs, extra="", monkeypatch=None):
    f = tmp_path / f"{name}.toml"
    f.write_text(OVERFIT.format(name=name, epochs=epochs, extra=extra))
    code = main(["run", "--scenario-file", str(f), "--out", str(tmp_path / "runs"),
                 "--results", str(tmp_path / "results"), "--no-progress"])
    (run,) = list((tmp_path / "runs" / "custom").glob(f"{name}-*/seed-0"))
    return code, run, json.loads((run / "metrics.json").read_text())


def _null_auc_sd(n_pos: int, n_neg: int) -> float:
    """Standard deviation of the AUC of a chance-level attack (Mann-Whitney under H0)."""
    return math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))


def test_overfit_model_is_caught_and_a_misaccounted_claim_fails_the_audit(tmp_path, feddp_cache, monkeypatch,
                                                                          capsys):
    """No DP noise at all, but the run *claims* epsilon = 0.05 (a planted accounting bug): the loss
    attack's AUC exceeds 0.9 and the audit's lower bound exceeds the claim, loudly."""
    from benchmark import runner

    real = runner.privacy_metrics

    def misaccounted(scenario, history):
        out = real(scenario, history)
        return out | {"epsilon": 0.05, "delta": 1e-5, "accountant": "planted-bug"}

    monkeypatch.setattr(runner, "privacy_metrics", misaccounted)
    code, run, m = _run(tmp_path, "overfit-planted", epochs=700)
    err = capsys.readouterr().err
    attacks = json.loads((run / "attacks.json").read_text())
    print(json.dumps(attacks["mia"], indent=1))
    assert attacks["mia"]["mia-loss"]["auc"] > 0.9
    assert m["mia_auc"] > 0.9
    assert m["epsilon_empirical_lb"] > 0.05 and m["audit_failed"] is True
    assert code == 3
    assert "AUDIT FAILED" in err and "bench: error: 1 row(s) failed the empirical privacy audit" in err
    board = pd.read_csv(tmp_path / "results" / "custom" / "leaderboard.csv")
    assert bool(board.loc[0, "audit_failed"]) is True


def test_dp_at_epsilon_1_leaves_the_attack_at_chance(tmp_path, feddp_cache):
    """... and its white-box gradient canaries (privacy/whitebox.py) travel from the client's DP-SGD
    through the ledger into the audit, whose ceiling they lift above the claim."""
    code, run, m = _run(tmp_path, "overfit-dp-eps1", epochs=700,
                        extra='dp_mode = "local-dpsgd"\ntarget_epsilon = 1.0\ndelta = 1e-5\n'
                              'gradient_canaries = 300')
    assert code == 0
    attacks = json.loads((run / "attacks.json").read_text())
    loss = attacks["mia"]["mia-loss"]
    sd = _null_auc_sd(loss["n_members"], loss["n_nonmembers"])
    assert abs(loss["auc"] - 0.5) < 3 * sd, (loss["auc"], sd)
    assert m["epsilon"] <= 1.0 + 1e-6
    assert m["audit_failed"] is False and m["epsilon_empirical_lb"] <= 1.0
    wb = json.loads((run / "history.json").read_text())["privacy"]["whitebox"]
    assert wb["m"] == 300 and len(wb["scores"]) == 300 and wb["rounds"] == [1] and wb["partition"] == 0
    (test,) = [t for t in attacks["audit"]["tests"] if t["candidates"] == "gradient-canary"]
    assert test["evidence"]["m"] == 300 and test["epsilon_lb"] <= 1.0 < test["ceiling"]
    assert m["audit_verdict"] == "passed" and m["audit_ceiling"] > 1.0


def test_inversion_of_a_batch1_gradient_with_and_without_dp():
    """An honest-but-curious server inverting a batch-1 FedSGD gradient of the tiny UNet (100
    objective evaluations). Knowing the client's noise and timestep (it replays the seed), it gets
    the image back almost exactly without DP and nothing under DP-SGD (C = 1, sigma = 1). Without
    them (secret randomness) it explains the raw update (cosine > 0.8) but not the DP one (< 0.3),
    and the image is not separated from the noise at this budget (see attacks.inversion)."""
    from attacks import inversion as inv
    from attacks.base import AttackBudget, match_scores
    from attacks.observe import RANDOMNESS, client_update
    from benchmark.data import load_dataset
    from benchmark.model import build_unet, make_scheduler, to_model_range

    ds = load_dataset("mnist-embedded", split="train")
    model = build_unet("unet-tiny", in_channels=1, resolution=28, seed=0)
    sched = make_scheduler(1000)
    x = to_model_range(ds.images[:1])
    budget = AttackBudget(inversion_iters=100)
    out = {}
    for name, dp in (("plain", {}), ("dp", {"clip": 1.0, "noise_multiplier": 1.0})):
        upd = client_update(model, sched, x, None, kind="gradient", generator=torch.Generator().manual_seed(0), **dp)
        for randomness in RANDOMNESS:
            rec, cos = inv.invert(model, sched, upd, shape=(1, 28, 28), budget=budget, randomness=randomness,
                                  generator=torch.Generator().manual_seed(1))
            out[name, randomness] = (cos, match_scores(ds.images[:1], rec))
    print({k: (round(c, 3), round(m["psnr"], 2), round(m["ssim"], 3)) for k, (c, m) in out.items()})
    plain, dp = out["plain", "known"][1], out["dp", "known"][1]
    assert plain["psnr"] > 35 and plain["ssim"] > 0.95          # measured: 44.9 dB, SSIM 1.000
    assert dp["psnr"] < 10 and dp["ssim"] < 0.2                 # measured: 2.7 dB, SSIM 0.03
    assert out["plain", "secret"][0] > 0.8
    assert out["dp", "secret"][0] < 0.3
    assert out["dp", "secret"][1]["psnr"] <= out["plain", "secret"][1]["psnr"] + 1.0
