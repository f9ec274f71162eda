"""Attacks: ROC metrics and the audit against independent references, the MIAs and gradient
inversion on the real (tiny) UNet, canaries, and the attack files of a run."""

import math

import numpy as np
import pytest
import torch

from attacks import audit
from attacks.base import AttackBudget, AttackError, auc, get_mia, mia_metrics, roc_curve, tpr_at_fpr
from attacks.inversion import client_update, invert, match_scores, psnr, ssim, timesteps_from_gradient


# ROC metrics ------------------------------------------------------------------------------------
def test_auc_and_roc_match_scikit_learn():
    from sklearn.metrics import roc_auc_score, roc_curve as sk_roc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + labels * 0.7
    scores[:20] = np.round(scores[:20])  # ties
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(scores, labels)
    sk_fpr, sk_tpr, _ = sk_roc(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_tpr_at_low_fpr_lira_convention():
    # 4 members (10, 9, 1, 0.5) and 10 non-members (-1 .. 8).
    scores = np.array([10, 9, 1, 0.5] + list(range(-1, 9)), dtype=float)
    labels = np.array([1] * 4 + [0] * 10)
    assert tpr_at_fpr(scores, labels, 0.0) == 0.5         # 10 and 9 beat every non-member
    assert tpr_at_fpr(scores, labels, 0.1) == 0.5         # threshold 8 adds one false positive only
    assert tpr_at_fpr(scores, labels, 0.8) == 1.0         # threshold 0.5: non-members 1..8 flagged
    m = mia_metrics(scores, labels)
    assert m["min_fpr"] == pytest.approx(0.1)
    assert m["tpr_at_0_1pct_fpr"] == tpr_at_fpr(scores, labels, 0.0)


def test_roc_refuses_bad_scores():
    with pytest.raises(AttackError, match="NaN"):
        roc_curve(np.array([0.1, np.nan]), np.array([1, 0]))
    with pytest.raises(AttackError, match="at least one member"):
        roc_curve(np.array([0.1, 0.2]), np.array([1, 1]))


# The audit --------------------------------------------------------------------------------------
def test_clopper_pearson_known_values():
    # k = 0: the upper bound solves (1 - p)^n = alpha.
    assert audit.clopper_pearson_upper(0, 20, 0.05) == pytest.approx(1 - 0.05 ** (1 / 20), rel=1e-9)
    assert audit.clopper_pearson_upper(20, 20, 0.05) == 1.0
    # Against an independent computation: the p where P[Bin(n, p) <= k] = alpha.
    from scipy.optimize import brentq
    from scipy.stats import binom

    p = brentq(lambda q: binom.cdf(7, 50, q) - 0.025, 1e-9, 1 - 1e-9)
    assert audit.clopper_pearson_upper(7, 50, 0.025) == pytest.approx(p, rel=1e-7)


def test_audit_bound_holds_on_an_exactly_eps_dp_mechanism():
    """Randomised response is exactly eps-DP: the 95 % lower bound may exceed eps at most ~5 % of
    the time (here it is conservative, so far less)."""
    eps, n, trials = 1.0, 400, 200
    p = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(0)
    exceed = 0
    bounds = []
    for i in range(trials):
        labels = np.r_[np.ones(n), np.zeros(n)]
        truthful = rng.random(2 * n) < p
        guess = np.where(truthful, labels, 1 - labels) + rng.random(2 * n) * 1e-3  # tie-break noise
        b = audit.epsilon_lower_bound(guess, labels, delta=0.0, seed=i)
        bounds.append(b.epsilon_lb)
        exceed += b.epsilon_lb > eps
    assert exceed <= 0.05 * trials
    assert np.median(bounds) > 0.3  # and it is not vacuous: it finds a good part of eps


def test_audit_perfect_separation_and_chance():
    labels = np.r_[np.ones(100), np.zeros(100)]
    perfect = audit.epsilon_lower_bound(labels + 0.0, labels, delta=1e-5)
    assert perfect.epsilon_lb > 2.5      # CP at n = 50: FPR, FNR <= ~0.07
    rng = np.random.default_rng(1)
    chance = audit.epsilon_lower_bound(rng.normal(size=200), labels, delta=1e-5)
    assert chance.epsilon_lb < 0.5
    assert audit.audit_verdict(perfect.epsilon_lb, 1.0) is True
    assert audit.audit_verdict(perfect.epsilon_lb, 10.0) is False
    assert audit.audit_verdict(perfect.epsilon_lb, None) is None


def test_bonferroni_makes_the_bound_more_conservative():
    labels = np.r_[np.ones(100), np.zeros(100)]
    one = audit.epsilon_lower_bound(labels + 0.0, labels, delta=1e-5, n_tests=1).epsilon_lb
    six = audit.epsilon_lower_bound(labels + 0.0, labels, delta=1e-5, n_tests=6).epsilon_lb
    assert six < one


# Image similarity -------------------------------------------------------------------------------
def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a) == math.inf
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    assert 25 < psnr(a, b) < 30
    # Two constant images: SSIM reduces to the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    x, y = np.full((1, 16, 16), 51, np.uint8), np.full((1, 16, 16), 204, np.uint8)
    mx, my, c1 = 0.2, 0.8, 0.01 ** 2
    assert ssim(x, y) == pytest.approx((2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1), rel=1e-6)
    noise = rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)
    assert ssim(a, noise) < 0.2


# Gradient inversion on the tiny UNet ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from benchmark.data import load_dataset
    from benchmark.model import build_unet, make_scheduler, to_model_range

    ds = load_dataset("mnist-embedded", split="train")
    return ds, build_unet("unet-tiny", in_channels=1, resolution=28, seed=0), make_scheduler(1000), to_model_range


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_timesteps_are_read_off_the_time_embedding_gradient(tiny, batch):
    ds, model, sched, to_range = tiny
    upd = client_update(model, sched, to_range(ds.images[:batch]), None, kind="gradient",
                        generator=torch.Generator().manual_seed(batch))
    true = upd.replayed.timesteps[0].sort().values
    assert torch.equal(timesteps_from_gradient(model, upd, 1000), true)


def test_known_randomness_inversion_recovers_the_image_and_dp_stops_it(tiny):
    """A small budget (30 L-BFGS evaluations): the raw batch-1 gradient gives the image back
    (about 22 dB); the DP-SGD one (C = 1, sigma = 1) gives nothing (about 3 dB)."""
    ds, model, sched, to_range = tiny
    x = to_range(ds.images[:1])
    budget = AttackBudget(inversion_iters=30)
    got = {}
    for name, dp in (("plain", {}), ("dp", {"clip": 1.0, "noise_multiplier": 1.0})):
        upd = client_update(model, sched, x, None, kind="gradient", generator=torch.Generator().manual_seed(0), **dp)
        rec, _ = invert(model, sched, upd, shape=(1, 28, 28), budget=budget, generator=torch.Generator().manual_seed(1))
        got[name] = match_scores(ds.images[:1], rec)["psnr"]
    assert got["plain"] > 18 and got["dp"] < 10, got


def test_invert_rejects_an_unknown_attacker_and_missing_randomness(tiny):
    ds, model, sched, to_range = tiny
    upd = client_update(model, sched, to_range(ds.images[:1]), None, kind="gradient",
                        generator=torch.Generator().manual_seed(0))
    kw = dict(shape=(1, 28, 28), budget=AttackBudget(inversion_iters=1), generator=torch.Generator())
    with pytest.raises(AttackError, match="unknown inversion randomness"):
        invert(model, sched, upd, randomness="psychic", **kw)
    upd.replayed = None
    with pytest.raises(AttackError, match="replayed noise"):
        invert(model, sched, upd, randomness="known", **kw)


# Canaries and the attack files of a run ------------------------------------------------------------
def _scenario(**kw):
    from benchmark.scenarios import Scenario

    base = dict(name="atk", num_clients=2, clients_per_round=2, rounds=1, max_train_images=40,
                num_train_timesteps=100, attacks=("mia-loss", "mia-secmi", "mia-pia", "inversion"))
    return Scenario(**(base | kw))


def test_canaries_are_planted_in_client_0_and_recorded():
    from benchmark.federation.task import load_federated_data

    plain = load_federated_data(_scenario(), 0, None)
    fed = load_federated_data(_scenario(canaries=5), 0, None)
    n = len(plain.dataset.labels)
    assert len(fed.dataset.labels) == n + 10
    assert len(fed.canary_members) == len(fed.canary_nonmembers) == 5
    both = np.r_[fed.canary_members, fed.canary_nonmembers]
    assert sorted(both.tolist()) == list(range(n, n + 10))
    assert set(fed.canary_members) <= set(fed.partition.clients[0].train_idx)
    assert not set(fed.canary_nonmembers) & set(fed.partition.members())
    assert not set(fed.canary_nonmembers) & set(fed.partition.heldout())
    # Everything else is the partition without canaries.
    assert np.array_equal(fed.partition.clients[1].train_idx, plain.partition.clients[1].train_idx)
    rec = fed.partition_record()
    assert rec["canaries"]["members"] == fed.canary_members.tolist()
    # Canaries are outliers: far from every natural image.
    nat = plain.dataset.images[:500].reshape(500, -1).astype(float)
    can = fed.dataset.images[n:].reshape(10, -1).astype(float)
    assert np.min(((nat[:, None] - can[None]) ** 2).mean(-1)) > 5000


def test_canaries_need_a_membership_attack():
    from benchmark.scenarios import ScenarioError

    with pytest.raises(ScenarioError, match="membership"):
        _scenario(canaries=4, attacks=("inversion",))
    with pytest.raises(ScenarioError, match=">= 0"):
        _scenario(canaries=-1)


def test_run_attacks_writes_every_file_and_column(tmp_path):
    import json

    from attacks.evaluate import run_attacks
    from benchmark.federation.task import build_model, load_federated_data

    sc = _scenario(canaries=4, dp_mode="local-dpsgd", target_epsilon=1.0, delta=1e-5)
    fed = load_federated_data(sc, 0, None)
    model = build_model(sc, fed.dataset, seed=0)
    budget = AttackBudget(mia_noise_draws=1, mia_timesteps=(0.1,), mia_max_candidates=16, inversion_iters=3,
                          inversion_local_steps=2)
    privacy = {"epsilon": 0.9, "max_grad_norm": 1.0, "noise_multiplier": 2.0}
    cols = run_attacks(sc, 0, model, fed, privacy, tmp_path, device="cpu", budget=budget)
    for f in ("attacks.json", "attack_scores.npz", "roc.png", "inversion.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    rec = json.loads((tmp_path / "attacks.json").read_text())
    assert set(rec["mia"]) == {"mia-loss", "mia-secmi", "mia-pia"} == set(rec["canaries"])
    assert rec["budget"]["mia_max_candidates"] == 16
    assert rec["audit"]["n_tests"] == 6 and rec["audit"]["claimed_epsilon"] == 0.9
    assert rec["inversion"]["observed"] == {"clip": 1.0, "noise_multiplier": 2.0}
    assert rec["inversion"]["gradient"]["randomness"] == "known"       # the leaderboard's attacker
    assert rec["inversion"]["fedavg-secret"]["randomness"] == "secret"  # and GIDM+'s, in attacks.json
    z = np.load(tmp_path / "attack_scores.npz")
    assert z["mia_loss_scores"].shape == (20,) and z["mia_loss_labels"].sum() == 10  # 10 held-out images
    assert z["mia_pia_canary_labels"].tolist() == [1] * 4 + [0] * 4
    assert cols["mia_best_attack"] in rec["mia"]
    assert cols["mia_auc"] == max(m["auc"] for m in rec["mia"].values())
    assert cols["audit_failed"] is False and cols["epsilon_empirical_lb"] >= 0
    assert 0 <= cols["inversion_ssim"] <= 1 and cols["inversion_psnr"] > 0


@pytest.mark.parametrize("name", ["mia-loss", "mia-secmi", "mia-pia"])
def test_membership_scores_are_deterministic_per_candidate(name):
    """Same generator seed, same scores; a candidate's score does not depend on its batch-mates."""
    from benchmark.model import build_unet, make_scheduler

    model = build_unet("unet-tiny", in_channels=1, resolution=28, num_classes=10, seed=0)
    sched = make_scheduler(100)
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    y = torch.arange(6)
    budget = AttackBudget(mia_noise_draws=1, mia_timesteps=(0.2,))
    attack = get_mia(name)
    a = attack.score(model, sched, x, y, budget=budget, generator=torch.Generator().manual_seed(3))
    b = attack.score(model, sched, x, y, budget=budget, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6,) and np.all(np.isfinite(a))
    if name != "mia-loss":  # no randomness at all: scoring a subset gives the same scores
        c = attack.score(model, sched, x[:3], y[:3], budget=budget, generator=torch.Generator().manual_seed(9))
        np.testing.assert_allclose(c, a[:3], rtol=1e-3)  # float32 batch-size rounding only


def test_the_attack_budget_is_part_of_a_scenarios_identity(monkeypatch):
    """Runs attacked with another budget never mix with old ones in a leaderboard."""
    import dataclasses

    from attacks import base

    with_attacks, without = _scenario(), _scenario(attacks=())
    h1, h0 = with_attacks.hash, without.hash
    monkeypatch.setitem(base.BUDGETS, "cpu", dataclasses.replace(base.BUDGETS["cpu"], inversion_iters=11))
    assert with_attacks.hash != h1
    assert without.hash == h0
