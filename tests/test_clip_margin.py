"""The clip margin of privacy.dpsgd.make_dp_step: per-sample norms computed in
a lower precision (TF32 convolutions on CUDA, bf16 autocast) may come out low, so every DP step
clips to C / (1 + margin) while its noise and accounting keep C. On CPU (float32/float64) the
margin is 0 and nothing changes. The CUDA side is in tests/test_gpu.py; here the margin logic
is tested with simulated norm errors, and its wiring on a small model.
"""

import pytest
import torch

from privacy.dpsgd import (CLIP_MARGINS, clip_factors, make_dp_step, margin_clip_norm, norm_precision,
                           precision_margin)


def perturbed(true_norms: torch.Tensor, rel: float, seed: int = 0) -> torch.Tensor:
    """Norms as a lower precision computes them: off by up to ``rel`` relative, either way, and
    the worst case (every norm ``rel`` low) included."""
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(true_norms.shape, generator=g, dtype=true_norms.dtype) * 2 - 1) * rel
    return torch.cat([true_norms * (1 + noise), true_norms * (1 - rel)])


@pytest.mark.parametrize("precision,rel", [("tf32", 1e-3), ("tf32", 5e-3), ("bf16", 3e-2)])
def test_margin_keeps_contributions_under_the_clip_with_perturbed_norms(precision, rel):
    clip = 0.7
    true = torch.logspace(-2, 2, 2001, dtype=torch.float64) * clip  # far below to far above the clip
    computed = perturbed(true, rel)
    factors = clip_factors(computed, clip, precision_margin(precision))
    contributions = factors * torch.cat([true, true])
    assert float(contributions.max()) <= clip
    # ...which without the margin they would not: the margin is what holds the bound.
    unsafe = clip_factors(computed, clip, 0.0) * torch.cat([true, true])
    assert float(unsafe.max()) > clip * (1 + rel / 2)
    # Images far below the clip are not clipped at all; at most 1 + margin is lost at the top.
    assert torch.equal(factors[: 500], torch.ones(500, dtype=factors.dtype))
    assert float(contributions.max()) >= clip / (1 + precision_margin(precision)) * (1 - rel) * 0.999


def test_no_margin_in_float32_and_float64_on_cpu():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        assert norm_precision("cpu", torch.float32) == "float32"  # TF32 flags concern CUDA only
        assert norm_precision("cuda", torch.float32) == "tf32"
        assert norm_precision("cuda", torch.float64) == "float64"
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        assert norm_precision("cuda", torch.float32) == "float32"
        torch.backends.cudnn.allow_tf32 = True  # torch's CUDA default: TF32 convolutions, full-precision matmuls
        assert norm_precision("cuda:0", torch.float32) == "tf32"
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert norm_precision("cpu", torch.float32, amp="bf16") == "bf16"
    assert CLIP_MARGINS["float32"] == CLIP_MARGINS["float64"] == 0.0
    assert margin_clip_norm(0.37, 0.0) == 0.37  # exactly: CPU clip factors are bit-identical
    with pytest.raises(ValueError, match="unknown norm precision"):
        precision_margin("fp8")
    with pytest.raises(ValueError, match=">= 0"):
        margin_clip_norm(1.0, -0.1)


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("mode", ["hooks", "ghost", "mixed-ghost", "mixed-ghost-bk"])
def test_every_mode_clips_at_the_margin_and_keeps_c_for_noise_and_accounting(mode):
    clip, margin, sigma = 0.05, 0.25, 1.3
    model = small_model()
    dp = make_dp_step(model, torch.optim.SGD(model.parameters(), lr=0.0), grad_sample_mode=mode,
                      max_grad_norm=clip, noise_multiplier=sigma, expected_batch_size=6, clip_margin=margin)
    assert dp.clip_margin == margin and dp.clip_norm == pytest.approx(clip / (1 + margin))
    assert dp.optimizer.max_grad_norm == clip and dp.optimizer.noise_multiplier == sigma  # noise std, accountant
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    dp.zero_grad()
    dp.backward(dp.module(x).pow(2).sum(1))
    if dp.mode.ghost_family:
        norms = dp.module.per_sample_gradient_norms.detach()
        applied = dp.module.get_clipping_coef().detach()
    else:
        grads = [p.grad_sample for p in dp.module.parameters()]
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads], 1).norm(dim=1)
        dp.optimizer.clip_and_accumulate()
        summed = [p.summed_grad for p in dp.module.parameters()]
        applied = clip_factors(norms, clip, margin)
        for g, s in zip(grads, summed):
            assert torch.allclose(torch.einsum("b,b...->...", applied, g), s, atol=1e-7)
    assert (norms > clip).sum() >= 3  # the test clips something
    assert torch.allclose(applied, clip_factors(norms, clip, margin))
    assert float((applied * norms).max()) <= clip / (1 + margin) * (1 + 1e-5)
    dp.close()


def test_noise_std_stays_at_c_under_a_margin():
    """The margin narrows the clip, never the noise: an empty batch's step is noise only, with std
    sigma * C / B (not sigma * C / ((1 + margin) B))."""
    clip, margin, sigma, batch = 2.0, 0.25, 1.0, 4
    model = torch.nn.Linear(200, 100)
    before = [p.detach().clone() for p in model.parameters()]
    dp = make_dp_step(model, torch.optim.SGD(model.parameters(), lr=1.0), grad_sample_mode="hooks",
                      max_grad_norm=clip, noise_multiplier=sigma, expected_batch_size=batch, clip_margin=margin,
                      noise_generator=torch.Generator().manual_seed(0))
    dp.zero_grad()
    dp.empty_batch()
    dp.step()
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert float(moved.std()) == pytest.approx(sigma * clip / batch, rel=0.03)
    dp.close()


def test_verify_dp_holds_contributions_to_c_at_the_margin():
    """verify-dp's clip is the reference's median norm, so without a margin the largest contribution
    is C (1.0, the CPU default, tests/test_privacy.py); at margin 0.25 every mode's is C / 1.25, and
    its clipped sums still agree with the reference's clipped at C / 1.25."""
    from privacy.verify import verify_dp

    report = verify_dp("unet-tiny", batch_size=2, modes=("hooks", "mixed-ghost"), in_channels=1, resolution=8,
                       clip_margin=0.25)
    assert report.passed and report.precision == "float32" and report.clip_margin == 0.25, report.table()
    for m in report.modes:
        assert m.max_contribution_over_clip == pytest.approx(1 / 1.25, abs=1e-4), report.table()
