"""Attacks: ROC metrics and the audit against independent references, the MIAs and gradient
inversion on the real (tiny) UNet, canaries, and the attack files of a run."""

import math

import numpy as np
import pytest
import torch

from attacks import audit
from attacks.base import (
    AttackBudget,
    AttackError,
    FinalModelObservation,
    auc,
    match_scores,
    mia_metrics,
    psnr,
    roc_curve,
    ssim,
    scale_budget,
    tpr_at_fpr,
)
from attacks.inversion import invert, timesteps_from_gradient
from attacks.observe import client_update
from attacks.registry import get_attack


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
    assert m["tpr_at_0_1pct_fpr"] == 0.5  # below the resolvable 1/10: read at zero false positives


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
    assert audit.audit_verdict(perfect.epsilon_lb, perfect.epsilon_lb, 1.0) == "failed"
    assert audit.audit_verdict(chance.epsilon_lb, perfect.epsilon_lb, 1.0) == "passed"
    assert audit.audit_verdict(chance.epsilon_lb, perfect.epsilon_lb, 10.0) == "inconclusive"
    assert audit.audit_verdict(perfect.epsilon_lb, perfect.epsilon_lb, None) is None


def test_bonferroni_makes_the_bound_more_conservative():
    labels = np.r_[np.ones(100), np.zeros(100)]
    one = audit.epsilon_lower_bound(labels + 0.0, labels, delta=1e-5, n_tests=1).epsilon_lb
    six = audit.epsilon_lower_bound(labels + 0.0, labels, delta=1e-5, n_tests=6).epsilon_lb
    assert six < one


def test_half_split_ceilings_are_the_issue_s_numbers():
    """A perfect attack on 64 + 64 (cpu) or 800 + 800 (gpu) candidates, three attacks: at most ~1.8 /
    ~4.4, and the ceiling from the evidence is exactly what the perfect attack gets."""
    for n, want in ((64, 1.8), (800, 4.4)):
        labels = np.r_[np.ones(n), np.zeros(n)]
        perfect = audit.epsilon_lower_bound(labels + 0.0, labels, delta=1e-5, n_tests=3)
        assert perfect.epsilon_lb == pytest.approx(want, abs=0.05)
        noisy = audit.epsilon_lower_bound(labels + np.random.default_rng(0).normal(size=2 * n), labels, delta=1e-5,
                                          n_tests=3)
        ceiling = audit.evidence_ceiling(noisy.evidence, delta=1e-5, alpha=0.05 / 3)
        assert ceiling == pytest.approx(perfect.epsilon_lb, rel=1e-9) and noisy.epsilon_lb < ceiling


def _binom_tail(r, q, v):
    """P[Binomial(r, q) >= v], summed exactly with integer binomial coefficients (independent of scipy)."""
    return math.fsum(math.comb(r, j) * q ** j * (1 - q) ** (r - j) for j in range(v, r + 1))


def test_one_run_pvalue_against_an_exact_sum():
    for m, r, v, eps in ((100, 40, 30, 0.5), (1000, 200, 170, 1.0), (50, 50, 50, 3.0)):
        q = math.exp(eps) / (1 + math.exp(eps))
        assert audit.one_run_pvalue(m, r, v, eps, 0.0) == pytest.approx(_binom_tail(r, q, v), rel=1e-9)
        # the delta term: 2 m delta max_i P[v - i <= Bin < v] / i, summed by hand
        worst = max((_binom_tail(r, q, v - i) - _binom_tail(r, q, v)) / i for i in range(1, v + 1))
        want = min(1.0, _binom_tail(r, q, v) + 2 * m * 1e-5 * worst)
        assert audit.one_run_pvalue(m, r, v, eps, 1e-5) == pytest.approx(want, rel=1e-6)
    # the bound is where the p-value crosses alpha
    eps = audit.one_run_epsilon(1000, 200, 170, delta=1e-5, alpha=0.05)
    assert audit.one_run_pvalue(1000, 200, 170, eps, 1e-5) < 0.05 <= audit.one_run_pvalue(1000, 200, 170, eps + 1e-4,
                                                                                         1e-5)


def test_one_run_bound_holds_on_an_exactly_eps_dp_mechanism():
    """Monte Carlo: m canaries, each in with probability 1/2; the 'model' is randomised response on
    each canary's bit (exactly eps-DP per canary); the attack scores by the released bit plus noise.
    The 95 % bound may exceed eps in at most ~5 % of runs; it is not vacuous either."""
    eps, m, trials = 1.0, 400, 200
    p = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(0)
    bounds = []
    for i in range(trials):
        included = rng.random(m) < 0.5
        released = np.where(rng.random(m) < p, included, ~included)
        scores = released + 0.01 * rng.normal(size=m)
        ev = audit.one_run_evidence(scores, included, seed=i)
        bounds.append(audit.evidence_bound(ev, delta=0.0, alpha=0.05))
    bounds = np.array(bounds)
    assert (bounds > eps).mean() <= 0.05
    assert np.median(bounds) > 0.4


def test_one_run_beats_the_half_split_and_certifies_above_4_at_1000_canaries():
    """A perfect attack: the one-run ceiling with m canaries against the half split's with m/2 + m/2
    candidates (same m images, same Bonferroni over 3 attacks)."""
    rng = np.random.default_rng(1)
    out = {}
    for m in (256, 1000):
        included = rng.random(m) < 0.5
        one = audit.evidence_ceiling(audit.one_run_evidence(included + 0.0, included), delta=1e-5, alpha=0.05 / 3)
        labels = np.r_[np.ones(m // 2), np.zeros(m // 2)]
        half = audit.epsilon_lower_bound(labels + 0.0, labels, delta=1e-5, n_tests=3).epsilon_lb
        assert one > half + 0.3, (m, one, half)
        out[m] = one
    assert out[1000] > 4.5 and out[256] > 3.0
    # and it is the bound a perfect attack gets
    included = rng.random(1000) < 0.5
    ev = audit.one_run_evidence(included + 0.0, included)
    assert audit.evidence_bound(ev, delta=1e-5, alpha=0.05) == pytest.approx(
        audit.evidence_ceiling(ev, delta=1e-5, alpha=0.05))


def test_one_run_guesses_ignore_the_candidates_order():
    """Constant scores carry no information: whatever order the canaries come in, a member-first
    order must not turn into correct guesses (ties are broken by a seeded permutation)."""
    included = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    ev = audit.one_run_evidence(np.zeros(1000), included, seed=3)
    assert audit.evidence_bound(ev, delta=1e-5, alpha=0.05) == 0.0


def test_a_row_bound_over_seeds_is_valid_and_the_suite_level_is_bonferroni():
    """The row's bound is the max over seeds at each seed's share of alpha (3 seeds: 1/2, 1/4, 1/4):
    never above the per-seed bound at alpha (a mean of seeds is not a bound); Monte Carlo on an
    exactly eps-DP mechanism: the chance that a row of 3 seeds is flagged is at most ~5 %."""
    eps, m = 1.0, 100
    p = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(2)

    def run_record():
        included = rng.random(m) < 0.5
        released = np.where(rng.random(m) < p, included, ~included)
        ev = audit.one_run_evidence(released + 0.01 * rng.normal(size=m), included, seed=int(rng.integers(1 << 30)))
        return {"delta": 0.0, "epsilon_audited": eps, "tests": [{"evidence": ev}]}

    seeds = [run_record() for _ in range(3)]
    row, _ = audit.seeds_bound(seeds)
    single = [audit.record_bound([s["tests"][0]["evidence"]], delta=0.0, alpha=0.05)[0] for s in seeds]
    assert row <= max(single)
    assert row == pytest.approx(max(audit.record_bound([s["tests"][0]["evidence"]], delta=0.0, alpha=a)[0]
                                    for s, a in zip(seeds, (0.025, 0.0125, 0.0125))))
    # The row's verdict (the one bench run's exit status reads) at 95 % for the row.
    flagged = sum(audit.seeds_judgement([run_record() for _ in range(3)]).verdict == "failed" for _ in range(40))
    assert flagged <= 0.05 * 40 + 1


def test_seed_shares_sum_to_alpha_and_keep_the_two_seed_ceiling():
    """One seed alpha, two halves (the rule every board before 2026-12-07 used: alpha / n_seeds),
    three on: the lowest seed half, the rest equal shares. Three seeds of the same evidence have
    the two-seed row's ceiling (equal thirds would lower it below a claim the two seeds could refute)."""
    assert audit.seed_alphas(1, 0.05) == [0.05] and audit.seed_alphas(2, 0.05) == [0.025, 0.025]
    for n in range(3, 9):
        shares = audit.seed_alphas(n, 0.05)
        assert len(shares) == n and shares[0] == 0.025 and len(set(shares[1:])) == 1
        assert sum(shares) == pytest.approx(0.05, rel=1e-12)
    with pytest.raises(audit.AuditError, match="at least one seed"):
        audit.seed_alphas(0, 0.05)
    m, included = 1000, np.arange(1000) % 2 == 0
    ev = audit.one_run_evidence(included.astype(float), included, seed=0)   # every guess right
    rec = {"delta": 0.0, "epsilon_audited": 1.0, "tests": [{"evidence": ev}]}
    two, three = audit.seeds_bound([rec] * 2), audit.seeds_bound([rec] * 3)
    assert three[1] == two[1] == audit.record_bound([ev], delta=0.0, alpha=0.025)[1]
    assert three[1] > audit.record_bound([ev], delta=0.0, alpha=0.05 / 3)[1]


def test_central_dp_rows_are_audited_at_their_image_level_epsilon():
    """Reproduce the issue's 2.14 / 8.98 / 24.0 from the noise multipliers of the central rows of the
    CPU grid as published at c0c1ca9 (tests/data; one image moves its client's clipped update by up
    to 2C: the accountant at sigma / 2); local rows are audited at their claim."""
    import csv

    from types import SimpleNamespace

    from conftest import REPO
    from privacy.accounting import client_level_epsilon
    from privacy.mechanisms import CENTRAL_DP, LOCAL_DPSGD

    rows = list(csv.DictReader((REPO / "tests" / "data" / "grid-cpu-c0c1ca9-leaderboard.csv").open()))
    want = {"central-eps1": 2.14, "central-eps4": 8.98, "central-eps10": 24.0}
    seen = set()
    for r in rows:
        tag = next((k for k in want if r["scenario"].endswith(k)), None)
        columns = {"epsilon": float(r["epsilon"] or "nan"), "noise_multiplier": float(r["noise_multiplier"] or "nan")}
        if r["dp_mode"] == "local-dpsgd":
            assert LOCAL_DPSGD.audited_epsilon(SimpleNamespace(), columns) == float(r["epsilon"])
        if tag is None:
            continue
        kw = dict(rounds=int(r["rounds"]), delta=float(r["delta"]), num_clients=int(r["num_clients"]),
                  clients_per_round=int(r["clients_per_round"]))
        sigma = float(r["noise_multiplier"])
        assert client_level_epsilon(noise_multiplier=sigma, **kw) == pytest.approx(float(r["epsilon"]), rel=1e-6)
        img = CENTRAL_DP.audited_epsilon(SimpleNamespace(name=r["scenario"], dp_mode=r["dp_mode"], **kw), columns)
        assert img == pytest.approx(want[tag], rel=2e-3)
        seen.add(tag)
    assert seen == set(want)


def test_the_image_level_epsilon_is_the_mechanisms():
    """A mechanism whose image moves the update by 4 sensitivities is accounted at sigma / 4; the
    audit asks the row's mechanism (no dp_mode string is compared); a row without DP claims
    nothing, and a claim its mechanism does not make (a planted bug) is held to as printed."""
    from types import SimpleNamespace

    from attacks.evaluate import audited_epsilon
    from privacy.accounting import AccountingError, client_level_epsilon
    from privacy.mechanisms import CENTRAL_DP, NO_DP, registered
    from privacy.mechanisms.central import CentralDP

    class Quad(CentralDP):
        name = "quad-test"
        image_sensitivity = 4.0

    kw = dict(rounds=2, delta=1e-5, num_clients=4, clients_per_round=1)
    columns = {"epsilon": 1.0, "noise_multiplier": 8.0}
    with registered(Quad()):
        four = audited_epsilon(SimpleNamespace(name="q", dp_mode="quad-test", **kw), columns)
    assert four == pytest.approx(client_level_epsilon(noise_multiplier=2.0, **kw))
    central = SimpleNamespace(name="c", dp_mode="central-dp", **kw)
    assert four > CENTRAL_DP.audited_epsilon(central, columns) > 1.0
    assert [g.unit for g in CENTRAL_DP.guarantees(central, columns)] == ["client", "image"]
    with pytest.raises(AccountingError, match="needs its noise multiplier"):
        CENTRAL_DP.audited_epsilon(central, {"epsilon": 1.0, "noise_multiplier": None})
    none = SimpleNamespace(name="n", dp_mode="none", **kw)
    assert NO_DP.audited_epsilon(none, {"epsilon": None}) is None and NO_DP.guarantees(none, {}) == []
    assert NO_DP.audited_epsilon(none, {"epsilon": 3.0}) == 3.0


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
    from benchmark.federation.partition_files import load_federated_data

    plain = load_federated_data(_scenario(), 0, None)
    fed = load_federated_data(_scenario(canaries=10), 0, None)
    n = len(plain.dataset.labels)
    assert len(fed.dataset.labels) == n + 10
    assert len(fed.canary_members) + len(fed.canary_nonmembers) == 10
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


def test_canaries_are_included_by_independent_fair_coins():
    """One-run auditing needs each canary in with probability 1/2, independently: the number
    included is Binomial(m, 1/2), not m/2; over many seeds every canary is in about half the time,
    and two canaries' coins are uncorrelated."""
    from attacks.canaries import include_canaries
    from scipy.stats import binomtest

    m, seeds = 64, 400
    coins = np.zeros((seeds, m), bool)
    for seed in range(seeds):
        inside, outside = include_canaries(m, seed=seed)
        assert sorted(np.r_[inside, outside].tolist()) == list(range(m))
        coins[seed, inside] = True
    counts = coins.sum(1)
    assert len(set(counts.tolist())) > 5                           # the number included is random
    assert binomtest(int(coins.sum()), coins.size, 0.5).pvalue > 1e-3
    corr = np.corrcoef(coins[:, 0], coins[:, 1])[0, 1]
    assert abs(corr) < 0.2
    assert counts.var() == pytest.approx(m / 4, rel=0.3)            # Binomial(m, 1/2) spread


def test_canaries_need_a_membership_attack():
    from benchmark.scenarios import ScenarioError

    with pytest.raises(ScenarioError, match="membership"):
        _scenario(canaries=4, attacks=("inversion",))
    with pytest.raises(ScenarioError, match=">= 0"):
        _scenario(canaries=-1)


def test_run_attacks_writes_every_file_and_column(tmp_path):
    import json

    from attacks.evaluate import run_attacks
    from benchmark.federation.partition_files import load_federated_data
    from benchmark.federation.task import build_model

    sc = _scenario(canaries=8, dp_mode="local-dpsgd", target_epsilon=1.0, delta=1e-5)
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
    assert rec["audit"]["epsilon_audited"] == 0.9 and rec["audit"]["audit_unit"] == "image"   # sample level
    methods = {(t["attack"], t["candidates"]): t["evidence"]["method"] for t in rec["audit"]["tests"]}
    assert set(methods.values()) == {"half-split", "one-run"} and methods["mia-loss", "canary"] == "one-run"
    assert rec["audit"]["audit_ceiling"] >= rec["audit"]["epsilon_empirical_lb"]
    assert rec["inversion"]["observed"] == {"clip": 1.0, "noise_multiplier": 2.0}
    assert rec["inversion"]["gradient"]["randomness"] == "known"       # the leaderboard's attacker
    assert rec["inversion"]["fedavg-secret"]["randomness"] == "secret"  # and GIDM+'s, in attacks.json
    z = np.load(tmp_path / "attack_scores.npz")
    assert z["mia_loss_scores"].shape == (20,) and z["mia_loss_labels"].sum() == 10  # 10 held-out images
    canaries = np.sort(np.r_[fed.canary_members, fed.canary_nonmembers])          # in canary order
    assert z["mia_pia_canary_labels"].tolist() == np.isin(canaries, fed.canary_members).astype(int).tolist()
    assert cols["mia_best_attack"] in rec["mia"]
    assert cols["mia_auc"] == max(m["auc"] for m in rec["mia"].values())
    assert cols["epsilon_empirical_lb"] >= 0 and cols["audit_verdict"] in ("passed", "inconclusive")
    assert cols["audit_failed"] is False and cols["audit_ceiling"] == rec["audit"]["audit_ceiling"]
    assert 0 <= cols["inversion_ssim"] <= 1 and cols["inversion_psnr"] > 0


def test_run_attacks_without_a_budget_uses_the_scales(tmp_path, monkeypatch):
    """The runner passes no budget: the scale's ``attack_budget`` is the one attacked with and recorded."""
    import dataclasses
    import json

    from attacks.evaluate import run_attacks
    from benchmark.federation.partition_files import load_federated_data
    from benchmark.federation.task import build_model
    from benchmark.scales import SCALES

    small = dict(mia_noise_draws=1, mia_timesteps=(0.1,), mia_max_candidates=12, inversion_iters=2,
                 inversion_local_steps=1)
    monkeypatch.setitem(SCALES, "cpu", dataclasses.replace(SCALES["cpu"], attack_budget=small))
    sc = _scenario(attacks=("mia-loss",))
    fed = load_federated_data(sc, 0, None)
    model = build_model(sc, fed.dataset, seed=0)
    cols = run_attacks(sc, 0, model, fed, {"epsilon": None}, tmp_path, device="cpu")
    rec = json.loads((tmp_path / "attacks.json").read_text())
    assert rec["budget"] == scale_budget("cpu").to_dict() and rec["budget"]["mia_max_candidates"] == 12
    assert cols["mia_best_attack"] == "mia-loss"


@pytest.mark.parametrize("name", ["mia-loss", "mia-secmi", "mia-pia"])
def test_membership_scores_are_deterministic_per_candidate(name):
    """Same generator seed, same scores; a candidate's score does not depend on its batch-mates."""
    from benchmark.model import build_unet, make_scheduler

    model = build_unet("unet-tiny", in_channels=1, resolution=28, num_classes=10, seed=0)
    sched = make_scheduler(100)
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    y = torch.arange(6)
    budget = AttackBudget(mia_noise_draws=1, mia_timesteps=(0.2,))
    attack = get_attack(name)
    obs = FinalModelObservation(model, sched, x, y)
    a = attack.run(obs, budget, torch.Generator().manual_seed(3)).scores
    b = attack.run(obs, budget, torch.Generator().manual_seed(3)).scores
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6,) and np.all(np.isfinite(a))
    if name != "mia-loss":  # no randomness at all: scoring a subset gives the same scores
        sub = FinalModelObservation(model, sched, x[:3], y[:3])
        c = attack.run(sub, budget, torch.Generator().manual_seed(9)).scores
        np.testing.assert_allclose(c, a[:3], rtol=1e-3)  # float32 batch-size rounding only


def test_the_attack_budget_is_part_of_a_scenarios_identity(monkeypatch):
    """Runs attacked with another budget never mix with old ones in a leaderboard."""
    import dataclasses

    from benchmark.scales import SCALES

    with_attacks, without = _scenario(), _scenario(attacks=())
    h1, h0 = with_attacks.hash, without.hash
    cpu = SCALES["cpu"]
    monkeypatch.setitem(SCALES, "cpu", dataclasses.replace(cpu, attack_budget={**cpu.attack_budget, "inversion_iters": 11}))
    assert with_attacks.hash != h1
    assert without.hash == h0


# The registry, the protocol and the referee ---------------------------------------------------------
def test_the_registry_is_the_scenarios_list_and_needs_no_torch():
    import subprocess
    import sys

    from attacks.registry import attack_names, membership_attack_names
    from benchmark.suites import ATTACKS

    assert ATTACKS == attack_names() == ("mia-loss", "mia-secmi", "mia-pia", "inversion")  # order is in the hash
    assert membership_attack_names() == ("mia-loss", "mia-secmi", "mia-pia")
    code = ("import sys, attacks.registry, attacks.base; from attacks.registry import get_attack; "
            "get_attack('inversion').threat_model; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "attacks.registry imported torch"


def test_attack_modules_import_without_cycles():
    """Module-level imports among attacks/ and benchmark/ form no cycle through an attack module."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    graph = {}
    for pkg in ("attacks", "benchmark"):
        for f in (root / pkg).glob("*.py"):
            mod = f"{pkg}.{f.stem}"
            deps = set()
            for node in ast.parse(f.read_text()).body:  # top level only: imports inside functions are lazy
                if isinstance(node, ast.ImportFrom) and node.module:
                    deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
            graph[mod] = deps
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}

    def reaches(start, goal, seen):
        for d in graph[start]:
            if d == goal or (d not in seen and not seen.add(d) and reaches(d, goal, seen)):
                return True
        return False

    attack_modules = [m for m in graph if m.startswith("attacks.")]
    assert len(attack_modules) >= 8
    assert [m for m in attack_modules if reaches(m, m, set())] == []


def test_the_registry_refuses_a_second_name_a_bad_name_and_an_unknown_observation():
    from attacks.base import MEMBERSHIP_THREAT, ThreatModel
    from attacks.registry import REGISTRY, AttackDeclaration, register, registered

    def toy(obs, budget, gen):
        return None

    with pytest.raises(AttackError, match="registered twice"):
        register(AttackDeclaration("mia-loss", MEMBERSHIP_THREAT, "toy", toy))
    for bad in ("MIA", "mia_x", "audit", "mia-x-canary", "-x"):
        with pytest.raises(AttackError, match="lowercase words"):
            register(AttackDeclaration(bad, MEMBERSHIP_THREAT, "toy", toy))
    with pytest.raises(AttackError, match="unknown observation kind 'the-weights'"):
        ThreatModel(adversary="a", observes="the-weights", sees="b", goal="c")
    with registered(AttackDeclaration("mia-toy", MEMBERSHIP_THREAT, "toy", toy)):
        assert get_attack("mia-toy").reference == "toy"
    assert "mia-toy" not in REGISTRY
    with pytest.raises(AttackError, match="unknown attack 'mia-toy'"):
        get_attack("mia-toy")


def test_one_referee_per_observation_kind():
    from attacks.base import OBSERVATION_KINDS
    from attacks.evaluate import REFEREES
    from attacks.registry import REGISTRY

    assert tuple(REFEREES) == OBSERVATION_KINDS
    assert {a.threat_model.observes for a in REGISTRY.values()} == set(OBSERVATION_KINDS)


def test_best_attack_tie_rule_and_the_roc_drawing_floor():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attacks.base import best_attack, draw_roc

    assert best_attack({"mia-loss": 0.6, "mia-pia": 0.7, "mia-secmi": 0.7}) == "mia-secmi"  # tie: last name
    assert best_attack({"mia-loss": 0.6, "mia-pia": 0.7}) == "mia-pia"
    assert best_attack({}) is None
    fig, ax = plt.subplots()
    draw_roc(ax, [("a", np.array([0.0, 0.25, 1.0]), np.array([0.0, 0.5, 1.0]))], n_nonmembers=4)
    line = ax.get_lines()[0]
    # FPR 0 and TPR 0 sit at half the floor 1/4, the axes' lower limit; other points are unmoved.
    assert line.get_xdata().tolist() == [0.125, 0.25, 1.0] and line.get_ydata().tolist() == [0.125, 0.5, 1.0]
    assert ax.get_xlim() == pytest.approx((0.125, 1)) and ax.get_xscale() == "log"
    plt.close(fig)


@pytest.fixture(scope="module")
def toy_fed():
    """A tiny federation's data and untrained model (the attacks a scenario lists do not change them)."""
    from benchmark.federation.partition_files import load_federated_data
    from benchmark.federation.task import build_model

    fed = load_federated_data(_scenario(), 0, None)
    return fed, build_model(_scenario(), fed.dataset, seed=0)


def _toy_run(tmp_path, monkeypatch, toy_fed, attacks, **budget):
    """The tiny run attacked by ``attacks`` (names the test registered: scenario validation reads the registry)."""
    from attacks.evaluate import run_attacks

    fed, model = toy_fed
    cols = run_attacks(_scenario(attacks=attacks), 0, model, fed, {"epsilon": None}, tmp_path, device="cpu",
                       budget=AttackBudget(**budget))
    return fed, cols


def test_a_new_membership_attack_runs_through_the_referee(tmp_path, monkeypatch, toy_fed):
    """A toy attack, registered from here: scores -||x||, gets the final-model observation."""
    import json

    from sklearn.metrics import roc_auc_score

    from attacks.base import MEMBERSHIP_THREAT, AttackResult
    from attacks.registry import AttackDeclaration, registered

    seen = []

    def norm_attack(obs, budget, generator):
        seen.append(type(obs).__name__)
        return AttackResult(scores=-obs.images.flatten(1).norm(dim=1).double().numpy())

    with registered(AttackDeclaration("mia-norm", MEMBERSHIP_THREAT, "toy", norm_attack)):
        fed, cols = _toy_run(tmp_path, monkeypatch, toy_fed, ("mia-norm",), mia_max_candidates=16)
    assert seen == ["FinalModelObservation"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attack_scores.npz", "attacks.json", "roc.png"]
    z = np.load(tmp_path / "attack_scores.npz")
    assert sorted(z.files) == ["mia_norm_labels", "mia_norm_scores"]
    scores, labels = z["mia_norm_scores"], z["mia_norm_labels"]
    assert labels.tolist() == [1] * 10 + [0] * 10                     # 10 held-out images, as many members
    # Every score is minus the norm of one of the run's images in the model's range [-1, 1].
    norms = np.linalg.norm(fed.dataset.images.reshape(len(fed.dataset.images), -1) / 127.5 - 1, axis=1)
    assert np.all(np.min(np.abs(norms[None] + scores[:, None]), axis=1) < 1e-4)
    assert cols["mia_best_attack"] == "mia-norm" and cols["mia_n_candidates"] == 20
    assert cols["mia_auc"] == pytest.approx(roc_auc_score(labels, scores))
    rec = json.loads((tmp_path / "attacks.json").read_text())
    assert set(rec["mia"]) == {"mia-norm"} and rec["audit"]["attack"] == "mia-norm" and "inversion" not in rec


def test_a_new_client_update_attack_gets_the_servers_view(tmp_path, monkeypatch, toy_fed):
    """A toy reconstruction attack (a blank image) gets one client's update, with the client's
    replayed randomness only for the ``known`` attacker, and is scored against the true image."""
    import json

    from attacks.base import CURIOUS_SERVER_THREAT, AttackResult
    from attacks.registry import AttackDeclaration, registered

    seen = []

    def blank(obs, budget, generator):
        seen.append((obs.update.kind, obs.update.replayed is not None, obs.image_shape))
        return AttackResult(reconstructions=np.zeros((1, *obs.image_shape), np.uint8), stats={"update_cosine": 0.5})

    with registered(AttackDeclaration("inversion-blank", CURIOUS_SERVER_THREAT, "toy", blank)):
        fed, cols = _toy_run(tmp_path, monkeypatch, toy_fed, ("inversion-blank",), inversion_kinds=("gradient",),
                             inversion_randomness=("known", "secret"))
    assert seen == [("gradient", True, (1, 28, 28)), ("gradient", False, (1, 28, 28))]
    rec = json.loads((tmp_path / "attacks.json").read_text())["inversion-blank"]
    truth = fed.dataset.images[rec["victims"]].astype(np.float64)
    want = 10 * np.log10(255.0 ** 2 / np.mean(truth ** 2))          # PSNR of a blank image
    assert cols["inversion_psnr"] == pytest.approx(want) == rec["gradient-secret"]["psnr"]
    assert cols["inversion_fedavg_psnr"] is None and rec["gradient"]["update_cosine"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attacks.json", "inversion.png"]


def test_the_referee_refuses_a_result_of_the_wrong_shape(tmp_path, monkeypatch, toy_fed):
    from attacks.base import MEMBERSHIP_THREAT, AttackResult
    from attacks.registry import AttackDeclaration, registered

    def short(obs, budget, generator):
        return AttackResult(scores=np.zeros(3))

    with registered(AttackDeclaration("mia-short", MEMBERSHIP_THREAT, "toy", short)):
        with pytest.raises(AttackError, match=r"one score per candidate \(20\), got shape \(3,\)"):
            _toy_run(tmp_path, monkeypatch, toy_fed, ("mia-short",), mia_max_candidates=16)


# What the server sees under each DP mode -----------------------------------------------------------
def _raw_gradient(model, sched, x, upd):
    """The plain gradient of the client's denoising loss, from the replayed noise and timestep."""
    noise, t = upd.replayed.noise[0], upd.replayed.timesteps[0]
    a = sched.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
    model.zero_grad(set_to_none=True)
    pred = model(a.sqrt() * x + (1 - a).sqrt() * noise, t).sample
    (pred - noise).pow(2).mean().backward()
    g = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return g


def _norm(d):
    return float(torch.sqrt(sum(v.double().pow(2).sum() for v in d.values())))


@pytest.mark.parametrize("row", ["none", "local-dpsgd", "central-server", "central-client"])
def test_what_the_server_sees_under_each_dp_mode(tiny, row):
    from attacks.evaluate import observed_dp, server_view

    ds, model, sched, to_range = tiny
    x = to_range(ds.images[:1])
    kw = dict(target_epsilon=1.0, delta=1e-5, max_grad_norm=1.0)
    sc = {"none": _scenario(),
          "local-dpsgd": _scenario(dp_mode="local-dpsgd", **kw),
          "central-server": _scenario(dp_mode="central-dp", central_clipping="server", **kw),
          "central-client": _scenario(dp_mode="central-dp", central_clipping="client", **kw)}[row]
    clip, sigma = 0.05, 2.0
    privacy = {"max_grad_norm": clip, "noise_multiplier": sigma}
    upd = server_view(sc, privacy, model, sched, x, None, kind="gradient", local_steps=1,
                      generator=torch.Generator().manual_seed(4))
    g = _raw_gradient(model, sched, x, upd)
    assert _norm(g) > 4 * clip                       # clipping would show
    got = upd.tensors
    if row in ("none", "central-server"):
        # No client-side DP: the raw update (server-side clipping and noise come after the server saw it).
        assert observed_dp(sc, privacy) == {"clip": None, "noise_multiplier": 0.0} and upd.clip is None
        for k in g:
            torch.testing.assert_close(got[k], g[k], rtol=1e-4, atol=1e-7)
    elif row == "central-client":
        # The client clips its whole update to C and adds no noise: the raw direction at norm C.
        assert upd.clip == clip and _norm(got) == pytest.approx(clip, rel=1e-4)
        for k in g:
            torch.testing.assert_close(got[k], g[k] * (clip / _norm(g)), rtol=1e-3, atol=1e-9)
    else:
        # DP-SGD, batch 1: the gradient clipped to C plus Gaussian noise of std sigma * C per coordinate.
        resid = torch.cat([(got[k] - g[k] * (clip / _norm(g))).flatten() for k in g]).double()
        assert upd.clip == clip and len(resid) > 10_000
        assert float(resid.std()) == pytest.approx(sigma * clip, rel=0.03)
        assert abs(float(resid.mean())) < 5 * sigma * clip / len(resid) ** 0.5
