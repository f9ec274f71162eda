"""Fixes to Opacus' per-sample gradient computation, installed through its own registries.

The trap (Opacus 1.6.0): ``opacus.utils.tensor_utils.unfold2d`` builds the unfolded view of a
Conv2d input with ``as_strided`` and strides computed as if the padded input were contiguous
NCHW. diffusers' attention blocks hand the next conv a channels_last-strided activation (and
``F.pad`` keeps that layout), so the view reads the wrong elements: on UNet2DModel with an
attention level we measured 16 parameter tensors with all-zero per-sample gradients and a 0.29-0.38
global relative error in ``hooks`` mode. In ``ghost`` mode Conv2d has no norm sampler and falls
back to the same grad sampler, so per-sample norms come out wrong (too small) and clipped
contributions exceed the clipping norm: the DP guarantee is silently void.

The fix makes the activations (and backprops) contiguous before Opacus' own
``compute_conv_grad_sample`` runs. It is registered with ``register_grad_sampler`` for
``nn.Conv2d``, which replaces the entry in ``GradSampleModule.GRAD_SAMPLERS``: the hooks mode and
the ghost/fast-gradient-clipping modes (which share that registry for layers without a norm
sampler) both pick it up. :func:`install` puts it there; :func:`privacy.dpsgd.make_dp_step`, the one
door to a DP-SGD step (training, ``bench verify-dp``, ``bench perf``), calls it before it wraps a
model, so nothing depends on which module happened to be imported first. ``bench verify-dp`` checks
it on the real model against an explicit per-sample loop.
"""

from __future__ import annotations

import contextlib

import torch
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample

OPACUS_CONV2D_GRAD_SAMPLER = compute_conv_grad_sample  # the stock one, kept for the regression test


def contiguous_conv2d_grad_sample(layer: torch.nn.Conv2d, activations: list[torch.Tensor],
                                  backprops: torch.Tensor) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Opacus' Conv2d grad sampler on contiguous (NCHW) activations and backprops."""
    return compute_conv_grad_sample(layer, [a.contiguous() for a in activations], backprops.contiguous())


_held_stock = False  # inside stock_opacus_conv2d(): install() leaves Opacus' own sampler in place


def install() -> None:
    """Register the fixed Conv2d grad sampler with Opacus (idempotent)."""
    if not _held_stock:
        register_grad_sampler([torch.nn.Conv2d])(contiguous_conv2d_grad_sample)


def installed() -> bool:
    """True when Opacus will use the fixed Conv2d grad sampler."""
    from opacus.grad_sample import GradSampleModule

    return GradSampleModule.GRAD_SAMPLERS.get(torch.nn.Conv2d) is contiguous_conv2d_grad_sample


@contextlib.contextmanager
def stock_opacus_conv2d():
    """Opacus' own Conv2d grad sampler for the length of the block, :func:`install` held off (to
    show what the fix fixes); the fix is back after it."""
    global _held_stock
    from opacus.grad_sample import GradSampleModule

    GradSampleModule.GRAD_SAMPLERS[torch.nn.Conv2d] = OPACUS_CONV2D_GRAD_SAMPLER
    _held_stock = True
    try:
        yield
    finally:
        _held_stock = False
        install()
