"""Mixed ghost clipping with book-keeping: DP-SGD per-sample norms without per-sample gradients
where that is cheaper, built on Opacus' own extension points.

Two grad-sample modes come from this module:

``mixed-ghost``     Opacus' fast-gradient-clipping module (``GradSampleModuleFastGradientClipping``)
                    with our norm samplers: Conv2d, Linear (3-d inputs) and GroupNorm get a
                    per-sample norm chosen **per layer by cost** (mixed ghost clipping, Bu et al.
                    2022): the ghost norm ``||G_i||^2 = sum_{t,t'} (a_t.a_t')(g_t.g_t')`` over the
                    unfolded activations ``a`` (T x d) and output gradients ``g`` (T x p) costs
                    ~T^2 (d + p) and holds a T x T matrix; the per-sample gradient costs ~T d p
                    and holds d x p. The cheaper one is taken (``ghost_is_cheaper``). The clipped
                    gradient is then Opacus' second backward of ``sum_i c_i loss_i``.
``mixed-ghost-bk``  The same norms, and *book-keeping* (Bu et al. 2023) instead of the second
                    backward: the backward hook keeps each layer's activations and output
                    gradients; once every norm is known, each layer's clipped gradient sum is its
                    ordinary weight gradient with the output gradients scaled per sample by the
                    clip factor ``c_i`` (``conv2d_weight``, an einsum, ...). One forward, one
                    backward to the activations only (no weight gradients), the norms, and one
                    weight-gradient pass per layer. Where a layer's norm needed its per-sample
                    gradients anyway (GroupNorm; Conv2d on the per-sample route whose per-sample
                    gradients are no larger than its activations plus output gradients: the
                    high-resolution levels), those are kept instead and the clipped sum is
                    ``sum_i c_i G_i``, with no second pass (``kept_per_sample_grads``): on
                    unet-28 (CPU, batch 32) that took the step from 1.58 s to 1.41 s (plain 1.06 s).

Both keep Opacus' optimizer (``DPOptimizerFastGradientClipping``: noise on ``p.grad``), its
accountant, its Poisson data loader, and its ``_norm_sample`` / ``get_clipping_coef``
machinery: the modes are registered in :mod:`privacy.modes` (their ``wrap`` builds
:class:`MixedGhostGradSampleModule`) and built by :func:`privacy.dpsgd.make_dp_step` like Opacus' own.
``bench verify-dp --modes mixed-ghost,mixed-ghost-bk`` checks norms, clip factors and clipped
sums against the per-sample loop.

Traps (found while building this, Opacus 1.6.0 / torch 2.14):

* Opacus' ghost mode registers a norm sampler for Linear and Embedding only: Conv2d and
  GroupNorm fall back to full per-sample gradients, which is why ``ghost`` is slower than
  ``hooks`` on a UNet. Registering ours through ``register_norm_sampler`` would change stock
  ``ghost`` too (it writes the class-level registry): ours live in the subclass' own
  ``NORM_SAMPLERS`` so that ``ghost`` stays Opacus' as a baseline.
* Opacus' Linear norm sampler always takes the ghost route on 3-d inputs (a T x T matrix per
  sample): on the 14x14 attention of unet-28 (T = 196, d = p = 64) that is ~6x the work of the
  per-sample gradient. Ours chooses by cost.
* Per-sample Conv2d gradients through im2col (Opacus' ``unfold2d`` + einsum, or ``F.unfold`` +
  bmm) are slow and memory-heavy (9x the activation for a 3x3 kernel); one weight-gradient
  convolution with the batch folded into the groups gives the same (B, p, d) tensor 4-7x faster
  on CPU (measured on a 32-channel 28x28 layer), so the per-sample route uses that.
* bf16 autocast: a norm computed in bf16 is off by ~0.4%, and an underestimated norm lets a
  clipped contribution exceed C. Our norm samplers and book-keeping sums upcast to float32, so
  ``mixed-ghost-bk`` clips to float32 accuracy; Opacus' second backward (``ghost``,
  ``mixed-ghost``) recomputes the clipped sum in bf16, so there the bound holds only to bf16
  rounding.
* ``PrivacyEngine._prepare_model`` refuses a pre-wrapped module unless
  ``type(module) is get_gsm_class(mode)``, so a subclass cannot be passed to ``make_private``:
  :func:`privacy.dpsgd.make_dp_step` does what ``make_private`` does to module and optimizer
  instead, with Opacus' own optimizer class, accountant hook and Poisson loader.
* Opacus' ``rearrange_grad_samples`` multiplies every output gradient by the batch size for
  ``loss_reduction = "mean"`` (to get per-sample-loss gradients): a full extra pass over every
  layer's output gradient. Our hook applies that factor to the (B,) norms and the clip factors.
* Book-keeping's single backward must not compute the non-private weight gradients (a third of
  a plain backward, thrown away): ``torch.autograd.backward(loss, inputs=[x, cheap params])``
  restricts autograd to what the hooks need. Layers off the image path (time/class embedding)
  only fire their hooks if one of their own parameters is requested; a missed layer would keep
  the previous step's ``_norm_sample``, so norms are reset every forward and checked.
* Full backward hooks on a layer whose inputs need no grad fire from the *output* side with a
  warning ("Full backward hook is firing when gradients are computed with respect to module
  outputs"): harmless here, the hook only reads the output gradient.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from opacus.grad_sample.group_norm import compute_group_norm_grad_sample
from opacus.grad_sample.linear import compute_linear_grad_sample, compute_linear_norm_sample
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from opacus.utils.module_utils import trainable_modules

from privacy.grad_samplers import contiguous_conv2d_grad_sample

_FORCED_ROUTE: str | None = None  # tests: "ghost" or "per-sample" everywhere (see force_route)


def ghost_is_cheaper(t: int, d: int, p: int) -> bool:
    """Ghost norm (T^2 (d + p) flops, T^2 memory) vs per-sample gradient (T d p, d p): per sample."""
    if _FORCED_ROUTE is not None:
        return _FORCED_ROUTE == "ghost"
    return t * (d + p) < d * p


@contextlib.contextmanager
def force_route(route: str):
    """Take the ``"ghost"`` or the ``"per-sample"`` route in every layer (to test both branches)."""
    global _FORCED_ROUTE
    if route not in ("ghost", "per-sample"):
        raise ValueError(f"route must be 'ghost' or 'per-sample', got {route!r}")
    saved, _FORCED_ROUTE = _FORCED_ROUTE, route
    try:
        yield
    finally:
        _FORCED_ROUTE = saved


def routes(model: nn.Module, in_channels: int, resolution: int) -> dict[str, tuple[str, int, int, int]]:
    """Layer name -> (route, T, d, p) for Conv2d and attention Linear layers (what ``bench perf`` and
    the docs show); found with a forward of one image."""
    shapes = {}

    def hook(name):
        def fn(mod, inp, out):
            if isinstance(mod, nn.Conv2d):
                d = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                shapes[name] = (out.shape[2] * out.shape[3], d, mod.out_channels)
            elif inp[0].dim() > 2:
                shapes[name] = (inp[0][0].numel() // mod.in_features, mod.in_features, mod.out_features)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, resolution, resolution), torch.zeros(1, dtype=torch.long),
                  class_labels=torch.zeros(1, dtype=torch.long) if model.config.num_class_embeds else None)
    finally:
        for h in handles:
            h.remove()
    return {n: ("ghost" if ghost_is_cheaper(*s) else "per-sample", *s) for n, s in shapes.items()}


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Norms are computed in at least float32: under bf16 autocast a bf16 norm is off by ~0.4%,
    and an underestimated norm lets a clipped contribution exceed the clipping norm."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _norm_of(grads: dict[nn.Parameter, torch.Tensor]) -> dict[nn.Parameter, torch.Tensor]:
    return {p: g.flatten(1).norm(2, dim=1) for p, g in grads.items()}


def _ghost_sq(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum_{t,t'} (a_t.a_t')(g_t.g_t') for a: (B, T, d), g: (B, T, p) -> (B,)."""
    aat = torch.bmm(a, a.transpose(1, 2))
    ggt = torch.bmm(g, g.transpose(1, 2))
    return (aat * ggt).flatten(1).sum(1).clamp_min(0)


# ----------------------------------------------------------------------------- norm samplers
def _per_sample_conv2d_weight_grad(layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(B, p, d/groups, k, k) per-sample weight gradients as ONE weight-gradient convolution with the
    batch folded into the groups (no im2col): 4-7x faster than Opacus' unfold + einsum on CPU.
    ``reshape`` is a logical op, so channels_last-strided activations are read correctly."""
    b, cin, h, w = a.shape
    cout = g.shape[1]
    grads = torch.nn.grad.conv2d_weight(
        a.reshape(1, b * cin, h, w), (b * cout, cin // layer.groups, *layer.kernel_size),
        g.reshape(1, b * cout, *g.shape[2:]), stride=layer.stride, padding=layer.padding,
        dilation=layer.dilation, groups=b * layer.groups)
    return grads.view(b, cout, cin // layer.groups, *layer.kernel_size)


def _conv2d_route(layer: nn.Conv2d, backprops: torch.Tensor) -> str | None:
    """``"ghost"`` or ``"per-sample"`` by cost for a plain Conv2d; None where neither applies
    (grouped or non-zero-padded: Opacus' per-sample gradients)."""
    if layer.groups != 1 or layer.padding_mode != "zeros":
        return None
    p, t = backprops.shape[1], backprops.shape[2] * backprops.shape[3]
    d = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    return "ghost" if ghost_is_cheaper(t, d, p) else "per-sample"


def _conv2d_per_sample_grads(layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """The per-sample route's gradients: (B, p, d, k, k) weights, (B, p) biases."""
    ret = {}
    if layer.weight.requires_grad:
        ret[layer.weight] = _per_sample_conv2d_weight_grad(layer, a, g)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = g.sum((2, 3))
    return ret


def conv2d_norm_sample(layer: nn.Conv2d, activations: list[torch.Tensor],
                       backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient norms of a Conv2d: ghost norm on unfolded activations or per-sample
    gradient, whichever ``ghost_is_cheaper`` says."""
    backprops = _f32(backprops)
    activations = [_f32(activations[0])]
    a = activations[0]
    route = _conv2d_route(layer, backprops)
    if route is None:
        return _norm_of(contiguous_conv2d_grad_sample(layer, activations, backprops))
    if route == "per-sample":
        return _norm_of(_conv2d_per_sample_grads(layer, a, backprops))
    g = backprops.flatten(2)
    ret = {}
    if layer.weight.requires_grad:
        # F.unfold is a real op (no as_strided): the channels_last trap of unfold2d does not apply.
        u = F.unfold(a, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        ret[layer.weight] = _ghost_sq(u.transpose(1, 2), g.transpose(1, 2)).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = g.sum(2).norm(2, dim=1)
    return ret


def linear_norm_sample(layer: nn.Linear, activations: list[torch.Tensor],
                       backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample norms of a Linear: Opacus' exact formula for 2-d inputs; for (B, T, d) inputs
    the ghost norm or the per-sample gradient by cost (Opacus always takes the ghost route)."""
    backprops = _f32(backprops)
    if backprops.dim() == 2:
        return compute_linear_norm_sample(layer, [_f32(activations[0])], backprops)
    a = _f32(activations[0])
    a, g = a.reshape(a.shape[0], -1, a.shape[-1]), backprops.reshape(backprops.shape[0], -1, backprops.shape[-1])
    if not ghost_is_cheaper(g.shape[1], a.shape[2], g.shape[2]):
        return _norm_of(compute_linear_grad_sample(layer, [a], g))
    ret = {}
    if layer.weight.requires_grad:
        ret[layer.weight] = _ghost_sq(a, g).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = g.sum(1).norm(2, dim=1)
    return ret


def group_norm_norm_sample(layer: nn.GroupNorm, activations: list[torch.Tensor],
                           backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """GroupNorm's per-sample gradients are (B, C): materialising them is the cheap route."""
    return _norm_of(compute_group_norm_grad_sample(layer, [_f32(activations[0])], _f32(backprops)))


def kept_per_sample_grads(layer: nn.Module, activations: list[torch.Tensor],
                          backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor] | None:
    """Book-keeping's per-sample gradients worth keeping, or None (keep activations and output
    gradients instead, and recompute the clipped sum as a weight gradient).

    Where a layer's norm comes from its materialised per-sample gradients anyway (GroupNorm; a
    Conv2d on the per-sample route), keeping them makes its clipped sum ``sum_i c_i G_i`` a
    (B,) x (B, n) product instead of a second weight-gradient pass over the feature map, and frees
    the activations and output gradients at once. It is done only where the per-sample gradients
    are no larger than those two tensors (high-resolution layers), so the stash never grows.
    """
    if isinstance(layer, nn.GroupNorm):
        return compute_group_norm_grad_sample(layer, [_f32(activations[0])], _f32(backprops))
    if not isinstance(layer, nn.Conv2d) or _conv2d_route(layer, backprops) != "per-sample":
        return None
    a = activations[0]
    if layer.weight.numel() > a[0].numel() + backprops[0].numel():  # one sample's gradient vs its tensors
        return None
    return _conv2d_per_sample_grads(layer, _f32(a), _f32(backprops))


# ------------------------------------------------- summed gradients from (activations, backprops)
def conv2d_summed_grad(layer: nn.Conv2d, activations, backprops) -> dict[nn.Parameter, torch.Tensor]:
    ret = {}
    if layer.weight.requires_grad:
        ret[layer.weight] = torch.nn.grad.conv2d_weight(
            activations[0].to(backprops.dtype), layer.weight.shape, backprops, stride=layer.stride,
            padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum((0, 2, 3))
    return ret


def linear_summed_grad(layer: nn.Linear, activations, backprops) -> dict[nn.Parameter, torch.Tensor]:
    a = activations[0].to(backprops.dtype).reshape(-1, layer.in_features)
    g = backprops.reshape(-1, layer.out_features)
    ret = {}
    if layer.weight.requires_grad:
        ret[layer.weight] = g.t() @ a
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = g.sum(0)
    return ret


def group_norm_summed_grad(layer: nn.GroupNorm, activations, backprops) -> dict[nn.Parameter, torch.Tensor]:
    ret = {}
    if layer.weight.requires_grad:
        normed = F.group_norm(activations[0].to(backprops.dtype), layer.num_groups, eps=layer.eps)
        ret[layer.weight] = (normed * backprops).sum(0).flatten(1).sum(1)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(0).flatten(1).sum(1)
    return ret


def embedding_summed_grad(layer: nn.Embedding, activations, backprops) -> dict[nn.Parameter, torch.Tensor]:
    idx = activations[0].reshape(-1)
    grad = torch.zeros_like(layer.weight, dtype=backprops.dtype)
    return {layer.weight: grad.index_add_(0, idx, backprops.reshape(-1, layer.embedding_dim))}


SUMMED_GRADS = {nn.Conv2d: conv2d_summed_grad, nn.Linear: linear_summed_grad,
                nn.GroupNorm: group_norm_summed_grad, nn.Embedding: embedding_summed_grad}


# --------------------------------------------------------------------------- the grad-sample module
class MixedGhostGradSampleModule(GradSampleModuleFastGradientClipping):
    """Opacus' fast-gradient-clipping module with cost-chosen norm samplers and, when
    ``book_keeping``, clipped gradients from stored activations and output gradients."""

    NORM_SAMPLERS = {**GradSampleModuleFastGradientClipping.NORM_SAMPLERS, nn.Conv2d: conv2d_norm_sample,
                     nn.Linear: linear_norm_sample, nn.GroupNorm: group_norm_norm_sample}

    def __init__(self, m: nn.Module, *, book_keeping: bool = False, **kwargs):
        kwargs.setdefault("use_ghost_clipping", True)
        super().__init__(m, **kwargs)
        self.book_keeping = book_keeping
        # (module, activations, output gradients, scale), or (module, None, kept per-sample grads, scale)
        self._stash: list[tuple] = []
        self._input: torch.Tensor | None = None
        if book_keeping:
            missing = sorted({type(mod).__name__ for _, mod in trainable_modules(self._module)
                              if type(mod) not in SUMMED_GRADS or type(mod) not in self.NORM_SAMPLERS})
            if missing:
                raise NotImplementedError(f"book-keeping has no norm/summed-gradient rule for {', '.join(missing)}")

    def forward(self, x, *args, **kwargs):
        if self.book_keeping and self.training and torch.is_grad_enabled():
            # The book-keeping backward asks autograd for d loss / d x (and for the cheap
            # parameters), not for the expensive weight gradients: see backward_to_activations.
            x = x.detach().requires_grad_(True)
            self._input = x
            self._stash.clear()
            for p in self.trainable_parameters:
                p._norm_sample = None
        return self._module(x, *args, **kwargs)

    def backward_to_activations(self, loss: torch.Tensor) -> None:
        """The first (and only) backward of book-keeping, without the weight gradients of Conv2d and
        of Linear layers on sequences, which book-keeping recomputes clipped anyway.

        Autograd runs only the nodes on a path to the requested ``inputs``: the model input (made
        to require grad in ``forward``) reaches every layer on the image path, so their backward
        hooks fire with their output gradients while ``convolution_backward`` skips the weight
        gradient; layers off that path (the time and class embeddings, the resnets' ``time_emb_proj``)
        are reached through their own, cheap, parameters. A layer missed by both would leave its
        norm unset: ``book_keeping_grads`` refuses that instead of clipping with a stale norm.
        """
        if self._input is None:
            raise RuntimeError("book-keeping backward without a training forward through this module")
        cheap = []
        for _, mod in trainable_modules(self._module):
            acts = getattr(mod, "activations", None)
            expensive = isinstance(mod, nn.Conv2d) or (isinstance(mod, nn.Linear) and acts and acts[-1][0].dim() > 2)
            if not expensive:
                cheap.extend(p for p in mod.parameters(recurse=False) if p.requires_grad)
        with quiet_output_hooks():  # layers off the image path fire from their outputs: expected
            torch.autograd.backward(loss, inputs=[self._input, *cheap])
        self._input = None

    def capture_backprops_hook(self, module, _forward_input, forward_output, loss_reduction, batch_first):
        if type(module) not in self.NORM_SAMPLERS or not batch_first:
            if self.book_keeping:
                raise NotImplementedError(f"book-keeping cannot handle {type(module).__name__} (batch_first only)")
            return super().capture_backprops_hook(module, _forward_input, forward_output, loss_reduction,
                                                  batch_first)
        if not self.hooks_enabled:
            return
        # Opacus' rearrange_grad_samples would multiply every output gradient by the batch size
        # (loss_reduction="mean"), a full pass over each tensor; norms are linear in that factor,
        # so it is applied to the (B,) norms and, in book-keeping, folded into the clip factors.
        activations = module.activations.pop()
        backprops = forward_output[0].detach()
        scale = backprops.shape[0] if loss_reduction == "mean" else 1
        kept = kept_per_sample_grads(module, activations, backprops) if self.book_keeping else None
        norms = _norm_of(kept) if kept is not None else self.NORM_SAMPLERS[type(module)](module, activations, backprops)
        for param, ns in norms.items():
            if param.requires_grad:
                param._norm_sample = ns * scale
                param._forward_counter -= 1
        if self.book_keeping:
            # Either the per-sample gradients or what recomputes their clipped sum, never both.
            self._stash.append((module, None, kept, scale) if kept is not None
                               else (module, activations, backprops, scale))

    def book_keeping_grads(self, coef: torch.Tensor) -> None:
        """Set ``p.grad = sum_i coef_i * grad_i`` for every trainable parameter (no second backward)."""
        unset = [p for p in self.trainable_parameters if p._norm_sample is None]
        if unset:
            raise RuntimeError(f"book-keeping: {len(unset)} parameter(s) got no per-sample norm in this backward")
        for p in self.trainable_parameters:
            p.grad = None
        while self._stash:
            module, activations, backprops, scale = self._stash.pop()
            if activations is None:  # kept per-sample gradients (kept_per_sample_grads): sum_i c_i G_i
                summed = {p: torch.tensordot(coef.to(g.dtype) * scale, g, dims=1) for p, g in backprops.items()}
            else:
                # float32 sums: each clipped contribution is then c_i G_i to float32 accuracy even when
                # the forward ran under bf16 autocast (a bf16 sum could exceed C by ~2^-8).
                g = _f32(backprops)
                scaled = g * (coef.to(g.dtype) * scale).view(-1, *([1] * (g.dim() - 1)))  # float64 stays float64
                acts = [_f32(a) if a.is_floating_point() else a for a in activations]
                summed = SUMMED_GRADS[type(module)](module, acts, scaled)
            for p, g in summed.items():
                g = g.to(p.dtype)
                p.grad = g if p.grad is None else p.grad + g
        missing = [p for p in self.trainable_parameters if p.grad is None]
        if missing:
            raise RuntimeError(f"book-keeping: {len(missing)} parameter(s) got no clipped gradient")

    def zero_stash(self) -> None:
        self._stash.clear()


class DPTensorBookKeeping(DPTensorFastGradientClipping):
    """``loss.backward()`` for ``mixed-ghost-bk``: one backward, then book-keeping sums."""

    def backward(self):
        if not getattr(self.module, "book_keeping", False):
            return super().backward()
        reduced = self.loss_per_sample.mean(0) if self.loss_reduction == "mean" else self.loss_per_sample.sum(0)
        self.module.backward_to_activations(reduced)
        self.module.book_keeping_grads(self.module.get_clipping_coef())


@contextlib.contextmanager
def quiet_output_hooks():
    """Silence torch's warning that a full backward hook fired from a layer's outputs (its inputs need
    no grad: the first conv, the embeddings). Opacus only reads output gradients, so it is expected;
    unsilenced it is printed on every step."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        yield


def dp_backward(gsm: nn.Module, optimizer, per_sample_loss: torch.Tensor) -> None:
    """The backward of one DP step in any ghost-family mode (Opacus' ghost, mixed-ghost[-bk])."""
    with quiet_output_hooks():
        DPTensorBookKeeping(gsm, optimizer, per_sample_loss, "mean").backward()
