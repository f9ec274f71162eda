"""White-box gradient canaries (privacy/whitebox.py) inside the real DP-SGD step of unet-tiny: the
canaries are sampled, clipped and noised by the step itself, and the one-run audit of their scores
refutes a planted defect (noise off, clip off) while passing the correct mechanism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from attacks.audit import evidence_bound, evidence_ceiling, one_run_evidence, one_run_fdp_evidence
from privacy.whitebox import CANARY_NORM_X, AuditBlock, canary_coins

M = 1000
DELTA = 1e-5
ALPHA = 0.05


def _train(plan, block, *, seed=0, mode_epochs=4, plant=None, n_images=20):
    from benchmark.model import build_unet
    from privacy.dpsgd import dp_train_epochs

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_images, 1, 8, 8), dtype=np.uint8)
    labels = np.zeros(n_images, dtype=np.int64)
    model = build_unet("unet-tiny", in_channels=1, resolution=8, seed=0)
    return dp_train_epochs(model, torch.optim.SGD(model.parameters(), lr=1e-3), plan, images, labels,
                           epochs=mode_epochs, num_train_timesteps=100, conditional=False, device="cpu", seed=seed,
                           accountant_history=[], sampling_generator=torch.Generator().manual_seed(seed + 1),
                           noise_generator=torch.Generator().manual_seed(seed + 2), canaries=block,
                           plant=plant)


def _plan(mode="mixed-ghost-bk", epsilon=2.0, batch_size=10, n_train=20):
    from privacy.dpsgd import plan_local_dp

    return plan_local_dp(n_train=n_train, batch_size=batch_size, rounds=1, local_epochs=4, target_epsilon=epsilon,
                         delta=DELTA, max_grad_norm=1.0, grad_sample_mode=mode)


def _audit(block, plan=None, steps=8):
    """(bound, ceiling) of the (eps, delta) one-run test, or with ``plan`` of the f-DP one."""
    if plan is None:
        ev = one_run_evidence(block.scores.numpy(), block.included, seed=0)
    else:
        ev = one_run_fdp_evidence(block.scores.numpy(), block.included, sample_rate=plan.sample_rate, steps=steps,
                                  seed=0)
    return evidence_bound(ev, delta=DELTA, alpha=ALPHA), evidence_ceiling(ev, delta=DELTA, alpha=ALPHA)


def test_coins_are_fair_and_seeded():
    a, b = canary_coins(M, 3), canary_coins(M, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, canary_coins(M, 4))
    assert 400 < a.sum() < 600


@pytest.mark.parametrize("mode", ["hooks", "mixed-ghost-bk"])
def test_each_drawn_canary_adds_exactly_the_clip_norm_and_out_canaries_nothing(mode, monkeypatch):
    """Noise silenced (a test-only patch of Opacus' noise function): every score is C times the
    number of steps the canary was drawn in, the excluded canaries' scores are exactly 0, and the
    draws follow the plan's rate."""
    import opacus.optimizers.optimizer as opt_mod

    monkeypatch.setattr(opt_mod, "_generate_noise", lambda std, reference, **kw: torch.zeros_like(reference))
    import opacus.optimizers.optimizer_fast_gradient_clipping as fast_mod

    monkeypatch.setattr(fast_mod, "_generate_noise", lambda std, reference, **kw: torch.zeros_like(reference))
    plan = _plan(mode)
    block = AuditBlock(canary_coins(M, 0), CANARY_NORM_X * plan.max_grad_norm)
    stats = _train(plan, block)
    scores = block.scores.numpy()
    assert block.steps == stats["steps"] == 8
    assert np.all(scores[~block.included] == 0)
    counts = scores[block.included] / plan.max_grad_norm
    assert np.allclose(counts, np.round(counts), atol=1e-4) and counts.max() <= 8
    # drawn at the plan's rate (0.5 per step): mean count 4 over 8 steps, within 5 standard errors
    se = np.sqrt(8 * 0.25 / block.included.sum())
    assert abs(counts.mean() - 8 * plan.sample_rate) < 5 * se


def test_correct_mechanism_passes_and_its_ceiling_exceeds_the_claim():
    plan = _plan()
    block = AuditBlock(canary_coins(M, 1), CANARY_NORM_X * plan.max_grad_norm)
    _train(plan, block, seed=1)
    for shape in (None, plan):
        bound, ceiling = _audit(block, shape)
        assert bound <= plan.target_epsilon < ceiling, (shape, bound, ceiling)


@pytest.mark.parametrize("plant", ["noise-off", "clip-off"])
def test_a_planted_defect_the_accountant_cannot_see_is_caught(plant):
    """privacy/plants.py through the real step: the accountant is still charged the plan (the run
    would pass its ledger), the noise drawn is none / per-sample clipping is skipped, and both
    one-run bounds on the white-box canaries exceed the claim."""
    from privacy.plants import PLANTS

    plan = _plan()
    block = AuditBlock(canary_coins(M, 2), CANARY_NORM_X * plan.max_grad_norm)
    stats = _train(plan, block, seed=2, plant=PLANTS[plant])
    assert stats["history"] == [(plan.noise_multiplier, plan.sample_rate, 8)]
    for shape in (None, plan):
        bound, _ = _audit(block, shape)
        assert bound > plan.target_epsilon, (plant, shape, bound)


def test_rate_plant_draws_at_four_times_the_rate_while_charging_the_plan(monkeypatch):
    import opacus.optimizers.optimizer as opt_mod
    import opacus.optimizers.optimizer_fast_gradient_clipping as fast_mod

    from privacy.plants import PLANTS

    for mod in (opt_mod, fast_mod):  # noise silenced so that the scores count the draws
        monkeypatch.setattr(mod, "_generate_noise", lambda std, reference, **kw: torch.zeros_like(reference))
    plan = _plan(batch_size=40, n_train=160)   # rate 1/4 -> 1 under the plant
    block = AuditBlock(canary_coins(M, 4), CANARY_NORM_X * plan.max_grad_norm)
    stats = _train(plan, block, seed=4, plant=PLANTS["rate-x4"], n_images=160)
    assert plan.sample_rate == 0.25 and stats["history"] == [(plan.noise_multiplier, 0.25, stats["steps"])]
    counts = block.scores.numpy()[block.included] / plan.max_grad_norm
    assert np.allclose(counts, stats["steps"])   # every included canary drawn at every step


def test_the_index_loader_draws_what_a_loader_over_the_images_drew():
    """dp_train_epochs samples indices (images, then included canaries) with PoissonIndices: without
    canaries its batches are exactly those of Opacus' Poisson loader over the images (same seeded
    generator, epoch after epoch, empty batches included)."""
    from privacy.dpsgd import PoissonIndices, poisson_loader

    plan = dataclasses.replace(_plan(), sample_rate=0.1)  # small batches: some steps draw nothing
    images = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8))
    old = poisson_loader(plan, torch.utils.data.TensorDataset(images), torch.Generator().manual_seed(5))
    new = PoissonIndices(plan, 20, torch.Generator().manual_seed(5))
    sizes = []
    for _ in range(6):
        for (xb,), idx in zip(old, new, strict=True):
            assert idx.dtype == torch.long and torch.equal(xb, images[idx])
            sizes.append(len(idx))
    assert 0 in sizes and max(sizes) > 1


def test_the_index_loader_draws_what_the_loader_over_images_and_canaries_drew():
    """With canaries the population is n images then the included canaries: the same draws as
    Opacus' Poisson loader over ``arange(n + canaries)`` (what dp_train_epochs used before)."""
    from privacy.dpsgd import PoissonIndices, poisson_loader

    plan = _plan()
    old = poisson_loader(plan, torch.utils.data.TensorDataset(torch.arange(20 + 500)), torch.Generator().manual_seed(7))
    new = PoissonIndices(plan, 20 + 500, torch.Generator().manual_seed(7))
    for _ in range(3):
        for (a,), b in zip(old, new, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("extra, problem", [
    ({"dp_mode": "none"}, "need dp_mode 'local-dpsgd'"),
    ({"gradient_canaries": 1}, "gradient_canaries must be 0 or at least 2"),
    ({"attacks": ()}, "add a membership attack"),
])
def test_scenario_rules(extra, problem):
    from benchmark.scenarios import Scenario, ScenarioError

    fields = dict(name="wb", dp_mode="local-dpsgd", target_epsilon=1.0, delta=1e-5, gradient_canaries=100,
                  attacks=("mia-loss",)) | extra
    if fields["dp_mode"] == "none":
        fields.pop("target_epsilon"), fields.pop("delta")
    with pytest.raises(ScenarioError, match=problem):
        Scenario(**fields)


def test_hash_unchanged_without_canaries():
    from benchmark.scenarios import Scenario

    s = Scenario(name="wb", dp_mode="local-dpsgd", target_epsilon=1.0, delta=1e-5, attacks=("mia-loss",))
    assert "gradient_canaries" not in s.definition()
    import dataclasses

    assert dataclasses.replace(s, gradient_canaries=10).hash != s.hash


def test_ledger_adds_rounds_and_refuses_wrong_scores():
    from flwr.app import MetricRecord

    from privacy.dpsgd import plan_local_dp
    from privacy.ledger import LocalDPLedger
    from privacy.whitebox import SCORES_KEY

    plan = plan_local_dp(n_train=20, batch_size=10, rounds=2, local_epochs=1, target_epsilon=1.0, delta=1e-5,
                         max_grad_norm=1.0)
    ledger = LocalDPLedger(None, plans={0: plan, 1: plan}, local_epochs=1, accountant="rdp", delta=1e-5,
                           partition_to_node={0: 10, 1: 11}, num_images={0: 20, 1: 20}, canaries={0: 3})
    for r in (1, 2):
        rec = MetricRecord({SCORES_KEY: [1.0, 2.0, float(r)], "steps": 2})
        assert ledger.take_canary_scores(0, r, rec) is None and SCORES_KEY not in rec
    assert ledger.canary_scores[0] == [2.0, 4.0, 3.0] and ledger.canary_rounds[0] == [1, 2]
    assert "expected 3" in ledger.take_canary_scores(0, 3, MetricRecord({SCORES_KEY: [1.0]}))
    assert "expected 3" in ledger.take_canary_scores(0, 3, MetricRecord({"steps": 2}))
    assert "carries no white-box canaries" in ledger.take_canary_scores(1, 3, MetricRecord({SCORES_KEY: [1.0]}))
