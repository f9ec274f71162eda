"""Per-sample gradient verification on the real UNet against an explicit per-sample loop.

For a batch of images with fixed noise and timesteps, the reference computes each image's
gradient with its own ``autograd.grad`` call (batch of one), on the bare model: it shares nothing
with the DP path. Each grad-sample mode registered in :mod:`privacy.modes` is built by
:func:`privacy.dpsgd.make_dp_step`, the construction path training and ``bench perf`` use, and must
reproduce it:

``hooks``  Opacus ``GradSampleModule``: per-sample gradients (every parameter) and their norms;
           then Opacus' own clipping (``DPOptimizer.clip_and_accumulate``) must give the sum of
           reference gradients clipped by the reference norms.
``ghost``  Opacus ``GradSampleModuleFastGradientClipping`` (ghost clipping, double backward):
           per-sample norms, and the clipped gradient sum after the second backward.
``mixed-ghost``, ``mixed-ghost-bk``  :mod:`privacy.mixed_ghost`: per-layer cost-chosen ghost norms
           (Conv2d, Linear, GroupNorm), then Opacus' second backward resp. book-keeping sums.

In every mode the clip factors Opacus applied are checked against the reference: each image's
contribution ``factor_i * g_i`` must not exceed the clipping norm. That is the property the DP
guarantee rests on, and the one the stock Opacus Conv2d grad sampler breaks on this model.

Precision: the modes run in the arithmetic training uses, i.e. under the backend flags
as they are (training never changes them; on CUDA torch's default keeps cuDNN's TF32 convolutions
on), with the clip margin :func:`privacy.dpsgd.make_dp_step` applies for that precision. The
reference is the yardstick and runs in full float32 (TF32 off). The comparisons of gradients,
norms and sums are at the precision's tolerance (``TOLERANCES``); the contribution bound stays at
``1 + CONTRIBUTION_TOL`` whatever the precision: the margin must absorb the norm error.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch

from benchmark.model import MODEL_INPUTS, build_unet, compile_forward, diffusion_loss, make_scheduler
from privacy import dpsgd
from privacy.modes import get_grad_sample_mode, grad_sample_mode_names

AMP_TOL = 3e-2  # bf16 autocast: 8-bit mantissas, batched vs one-image rounding
TF32_TOL = 1e-2  # TF32 (10-bit mantissas): norms ~1e-3 off the float32 reference (the clip margin is 2^-7)
# Agreement with the reference per norm precision (privacy.dpsgd.norm_precision).
TOLERANCES = {"float64": 1e-9, "float32": 1e-4, "tf32": TF32_TOL, "bf16": AMP_TOL}
# max_i ||factor_i * g_i|| / C must stay below 1 + this; bf16 autocast keeps its (bf16) reference and AMP_TOL.
CONTRIBUTION_TOL = {"float64": 1e-9, "float32": 1e-4, "tf32": 1e-4, "bf16": AMP_TOL}


@dataclass
class ModeReport:
    mode: str
    grad_rel_err: float | None          # ||G - G_ref|| / ||G_ref|| over all per-sample grads (hooks)
    zero_params: int | None             # tensors whose per-sample grads are all zero, reference not
    worst_param: str | None
    norm_rel_err: float                 # max_i |n_i - n_ref_i| / n_ref_i
    clipped_sum_rel_err: float          # clipped, summed gradient vs the reference's
    max_contribution_over_clip: float   # max_i ||factor_i * g_ref_i|| / C  (must be <= 1)
    passed: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    model: str
    device: str
    dtype: str
    batch_size: int
    max_grad_norm: float
    modes: list[ModeReport]
    amp: str | None = None
    compiled: bool = False
    precision: str = "float32"          # what the modes' norms were computed in (privacy.dpsgd.norm_precision)
    clip_margin: float = 0.0            # the modes clipped to max_grad_norm / (1 + clip_margin)

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.modes)

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}

    def table(self) -> str:
        lines = [f"verify-dp {self.model} on {self.device} ({self.dtype}, batch {self.batch_size}, "
                 f"clip {self.max_grad_norm:.4g}{', bf16 autocast' if self.amp else ''}"
                 f"{', torch.compile' if self.compiled else ''}; norms in {self.precision}, "
                 f"clip margin {self.clip_margin:.3g})",
                 f"{'mode':14s} {'grad rel err':>12s} {'zero tensors':>12s} {'norm rel err':>12s} "
                 f"{'clipped sum err':>15s} {'max contrib/C':>13s}  result"]
        for m in self.modes:
            ge = "-" if m.grad_rel_err is None else f"{m.grad_rel_err:.2e}"
            zp = "-" if m.zero_params is None else str(m.zero_params)
            lines.append(f"{m.mode:14s} {ge:>12s} {zp:>12s} {m.norm_rel_err:12.2e} "
                         f"{m.clipped_sum_rel_err:15.2e} {m.max_contribution_over_clip:13.6f}  "
                         f"{'ok' if m.passed else 'MISMATCH: ' + '; '.join(m.problems)}")
        return "\n".join(lines)


def _inputs(c: int, r: int, batch_size: int, num_classes: int | None, device, dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(batch_size, c, r, r, generator=g) * 2 - 1).to(device, dtype)
    noise = torch.randn(batch_size, c, r, r, generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (batch_size,), generator=g).to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device) if num_classes else None
    return x0, noise, t, labels


def reference_per_sample_grads(model, scheduler, x0, noise, t, labels) -> dict[str, torch.Tensor]:
    """name -> (B, *param.shape): one autograd.grad call per image."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    per = {n: [] for n, _ in named}
    for i in range(x0.shape[0]):
        y = labels[i:i + 1] if labels is not None else None
        loss = diffusion_loss(model, scheduler, x0[i:i + 1], y, noise=noise[i:i + 1], timesteps=t[i:i + 1])
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for (n, p), g in zip(named, grads):
            per[n].append(torch.zeros_like(p) if g is None else g.detach())
    return {n: torch.stack(v) for n, v in per.items()}


def _norms(per: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([g.flatten(1).norm(dim=1) for g in per.values()], 1).norm(dim=1)


def _clipped_sum(per: dict[str, torch.Tensor], factors: torch.Tensor) -> dict[str, torch.Tensor]:
    return {n: torch.einsum("b,b...->...", factors.to(g.dtype), g) for n, g in per.items()}


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[n] - b[n]).double().pow(2).sum()) for n in b)
    den = sum(float(b[n].double().pow(2).sum()) for n in b)
    return (num / den) ** 0.5 if den > 0 else float(num > 0)


def _copy(model, compiled: bool):
    m = copy.deepcopy(model)
    if compiled:
        torch._dynamo.reset()  # each mode compiles afresh (no recompile limit reached, no eager fallback)
        compile_forward(m)
    return m


def _dp_step(model, inputs, clip, mode, compiled, amp=None, clip_margin=None):
    """The mode's DP step as training builds it (no noise, learning rate 0: nothing moves)."""
    m = _copy(model, compiled)
    return dpsgd.make_dp_step(m, torch.optim.SGD(m.parameters(), lr=0.0), grad_sample_mode=mode,
                              max_grad_norm=clip, noise_multiplier=0.0, expected_batch_size=inputs[0].shape[0],
                              amp=amp, clip_margin=clip_margin)


def _check_per_sample(model, scheduler, inputs, ref, ref_norms, clip, tol, mode="hooks", compiled=False,
                      contrib_tol=None, amp=None, clip_margin=None) -> ModeReport:
    """A mode with per-sample gradients (``hooks``): the gradients themselves, their norms, and
    Opacus' own clipping (``DPOptimizer.clip_and_accumulate``)."""
    x0, noise, t, labels = inputs
    dp = _dp_step(model, inputs, clip, mode, compiled, amp, clip_margin)
    dp.zero_grad()
    dp.backward(diffusion_loss(dp.module, scheduler, x0, labels, noise=noise, timesteps=t, reduction="none"))
    got = {n.removeprefix("_module."): p.grad_sample.detach().clone() for n, p in dp.module.named_parameters()
           if p.requires_grad}
    zero = [n for n in ref if got[n].abs().max() == 0 and ref[n].abs().max() > 0]
    worst = max(ref, key=lambda n: float((got[n] - ref[n]).norm()))  # largest share of the error
    norms = _norms(got)
    dp.optimizer.clip_and_accumulate()
    summed = {n.removeprefix("_module."): p.summed_grad.detach() for n, p in dp.module.named_parameters()
              if p.requires_grad}
    factors = dpsgd.clip_factors(norms, clip, dp.clip_margin)  # what Opacus applied (its formula, at the margin)
    dp.close()
    return _finish(mode, _rel(got, ref), len(zero), worst, norms, summed, factors, ref, ref_norms, clip, tol,
                   contrib_tol, dp.clip_norm)


def _check_ghost(model, scheduler, inputs, ref, ref_norms, clip, tol, mode="ghost", compiled=False,
                 contrib_tol=None, amp=None, clip_margin=None) -> ModeReport:
    """A ghost-family mode: per-sample norms and clip factors, and the clipped sum after its backward."""
    x0, noise, t, labels = inputs
    dp = _dp_step(model, inputs, clip, mode, compiled, amp, clip_margin)
    dp.zero_grad()
    dp.backward(diffusion_loss(dp.module, scheduler, x0, labels, noise=noise, timesteps=t, reduction="none"))
    norms = dp.module.per_sample_gradient_norms.detach()
    summed = {n.removeprefix("_module."): p.grad.detach() for n, p in dp.module.named_parameters()
              if p.requires_grad}
    factors = dp.module.get_clipping_coef().detach()
    dp.close()
    return _finish(mode, None, None, None, norms, summed, factors, ref, ref_norms, clip, tol, contrib_tol,
                   dp.clip_norm)


def _finish(mode, grad_err, zero, worst, norms, summed, factors, ref, ref_norms, clip, tol, contrib_tol=None,
            clip_norm=None) -> ModeReport:
    """``clip`` is the sensitivity C the contributions are held to; ``clip_norm`` (<= C, the margin's)
    what the mode clipped to, which the reference's clipped sum uses too."""
    contrib_tol = tol if contrib_tol is None else contrib_tol
    clip_norm = clip if clip_norm is None else clip_norm
    norm_err = float(((norms - ref_norms).abs() / ref_norms.clamp_min(1e-30)).max())
    want = _clipped_sum(ref, (clip_norm / (ref_norms + 1e-6)).clamp(max=1.0))
    sum_err = _rel(summed, want)
    contrib = float((factors.to(ref_norms.dtype) * ref_norms).max() / clip)
    rep = ModeReport(mode, grad_err, zero, worst, norm_err, sum_err, contrib)
    if grad_err is not None and grad_err > tol:
        rep.problems.append(f"per-sample gradients off by {grad_err:.2e} (worst {worst})")
    if zero:
        rep.problems.append(f"{zero} parameter tensors with all-zero per-sample gradients")
    if norm_err > tol:
        rep.problems.append(f"per-sample norms off by {norm_err:.2e}")
    if sum_err > tol:
        rep.problems.append(f"clipped gradient sum off by {sum_err:.2e}")
    if contrib > 1 + contrib_tol:
        rep.problems.append(f"a clipped contribution is {contrib:.4f}x the clipping norm")
    rep.passed = not rep.problems
    return rep


def verify_dp(model_name: str, *, device: str = "cpu", batch_size: int = 4, num_classes: int | None = 10,
              modes: tuple[str, ...] | None = None, dtype: torch.dtype = torch.float32,
              seed: int = 0, tol: float | None = None, in_channels: int | None = None,
              resolution: int | None = None, amp: str | None = None, compiled: bool = False,
              tf32: bool | None = None, clip_margin: float | None = None) -> VerifyReport:
    """Compare every requested mode (default: every registered one) with the per-sample loop on
    ``model_name``'s real UNet.

    The modes run under the TF32 flags training runs under: as they are (``tf32=None``; torch's
    CUDA default is TF32 convolutions on, matmuls off), or both set to ``tf32``; the reference
    runs with TF32 off. ``tol`` overrides the precision's agreement tolerance (``TOLERANCES``);
    the contribution bound is ``1 + CONTRIBUTION_TOL[precision]`` (or ``tol``, if smaller).
    ``clip_margin`` overrides the margin :func:`privacy.dpsgd.make_dp_step` would pick (``0.0``
    shows what the margin protects against).

    ``amp="bf16"`` runs the forward of the reference and of every mode under bf16 autocast (as
    ``bench perf --amp bf16`` trains) and compares at ``AMP_TOL``: the batched and the one-image
    forward round differently in bf16, so agreement is to bf16 accuracy, not float32's.
    ``compiled=True`` runs every mode through ``torch.compile``'d forward passes
    (:func:`benchmark.model.compile_forward`); the reference stays the eager per-sample loop.
    """
    known = grad_sample_mode_names()
    modes = known if modes is None else tuple(modes)
    unknown = [m for m in modes if m not in known]
    if unknown:
        raise ValueError(f"unknown DP mode(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if batch_size < 2:
        raise ValueError("verify-dp needs a batch of at least 2 images")
    if amp not in (None, "bf16"):
        raise ValueError(f"unknown amp {amp!r} (bf16)")
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    training_flags = saved if tf32 is None else (tf32, tf32)
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = training_flags
        precision = dpsgd.norm_precision(device, dtype, amp=amp)
        contrib_tol = CONTRIBUTION_TOL[precision] if tol is None else min(tol, CONTRIBUTION_TOL[precision])
        tol = TOLERANCES[precision] if tol is None else tol
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp is not None):
            rep = _verify(model_name, device, batch_size, num_classes, modes, dtype, seed, tol, in_channels,
                          resolution, compiled, contrib_tol, amp, clip_margin, training_flags)
        rep.amp, rep.compiled, rep.precision = amp, compiled, precision
        rep.clip_margin = dpsgd.precision_margin(precision) if clip_margin is None else clip_margin
        return rep
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _verify(model_name, device, batch_size, num_classes, modes, dtype, seed, tol, in_channels,
            resolution, compiled, contrib_tol, amp, clip_margin, training_flags) -> VerifyReport:
    c, r = MODEL_INPUTS.get(model_name, (None, None))  # a config:PATH model: the data's shape, given
    c, r = in_channels or c, resolution or r
    if c is None or r is None:
        raise ValueError(f"model {model_name!r}: give the input's channels and resolution to verify it")
    model = build_unet(model_name, in_channels=c, resolution=r, num_classes=num_classes, seed=seed)
    model.to(device, dtype).train()
    scheduler = make_scheduler()
    inputs = _inputs(c, r, batch_size, num_classes, device, dtype, seed)
    # The yardstick in full float32: TF32 off for the reference only (10-bit mantissas would make
    # it as inexact as what it measures).
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    ref = reference_per_sample_grads(model, scheduler, *inputs)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = training_flags
    ref_norms = _norms(ref)
    clip = float(ref_norms.median())  # half the images get clipped
    reports = []
    for mode in modes:
        check = _check_ghost if get_grad_sample_mode(mode).ghost_family else _check_per_sample
        reports.append(check(model, scheduler, inputs, ref, ref_norms, clip, tol, mode, compiled, contrib_tol,
                             amp, clip_margin))
    return VerifyReport(model_name, str(device), str(dtype).removeprefix("torch."), batch_size, clip, reports)
