"""The grad-sample modes of DP-SGD, each defined once here, and the registry type the DP
mechanisms (:mod:`privacy.mechanisms`) share.

``GradSampleMode``  ``hooks``, ``ghost``, ``mixed-ghost``, ``mixed-ghost-bk``: how a DP-SGD step gets
                    its per-sample norms and clipped gradient. ``wrap`` builds the Opacus grad-sample
                    module around a model; :func:`privacy.dpsgd.make_dp_step`, the one construction
                    path of training, ``bench verify-dp`` and ``bench perf``, does the rest from
                    ``ghost_family`` (Opacus' fast-gradient-clipping optimizer and backward, or
                    per-sample gradients and ``DPOptimizer``).

A new grad-sample mode is its implementation plus one ``register_grad_sample_mode`` call here.
The registries are plain dicts from name to entry and refuse duplicates (as Opacus' and HELM's
do); :func:`registered` adds an entry for the length of a ``with`` block (tests).

This module imports neither torch, Opacus nor Flower (``bench --help`` and the scenario layer
read it): the ``wrap`` hooks import Opacus when they are called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


class ModeError(ValueError):
    """An unknown or duplicate DP mechanism or grad-sample mode (one-line message)."""


class _Registry(dict):
    """name -> entry; refuses a name twice and answers an unknown name in one line."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, entry):
        if entry.name in self:
            raise ModeError(f"{self.what} {entry.name!r} is already registered")
        self[entry.name] = entry
        return entry

    @contextlib.contextmanager
    def holding(self, entry):
        """``entry`` is registered inside the block and removed after it."""
        self.register(entry)
        try:
            yield entry
        finally:
            del self[entry.name]

    def get_entry(self, name: str):
        try:
            return self[name]
        except (KeyError, TypeError):
            raise ModeError(f"unknown {self.what} {name!r} (known: {', '.join(self)})") from None


# --------------------------------------------------------------------------- grad-sample modes
@dataclass(frozen=True)
class GradSampleMode:
    name: str
    description: str
    ghost_family: bool                   # norms without kept per-sample gradients, clipped sum after
    supports_noise_multiplicity: bool    # K draws per image averaged before clipping (needs grad_sample)
    wrap: Callable[..., Any]             # (model, *, max_grad_norm) -> Opacus grad-sample module


_GRAD_SAMPLE_MODES = _Registry("grad_sample_mode")


def register_grad_sample_mode(mode: GradSampleMode) -> GradSampleMode:
    return _GRAD_SAMPLE_MODES.register(mode)


def get_grad_sample_mode(name: str) -> GradSampleMode:
    return _GRAD_SAMPLE_MODES.get_entry(name)


def grad_sample_mode_names() -> tuple[str, ...]:
    return tuple(_GRAD_SAMPLE_MODES)


@contextlib.contextmanager
def registered(mode: GradSampleMode) -> Iterator[GradSampleMode]:
    """``mode`` is registered inside the block and removed after it (tests of a new mode)."""
    with _GRAD_SAMPLE_MODES.holding(mode):
        yield mode


def _wrap_hooks(model, *, max_grad_norm: float):
    from opacus import GradSampleModule

    return GradSampleModule(model, batch_first=True, loss_reduction="mean")


def _wrap_ghost(model, *, max_grad_norm: float):
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping

    return GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean",
                                                max_grad_norm=max_grad_norm, use_ghost_clipping=True)


def _wrap_mixed_ghost(model, *, max_grad_norm: float):
    from privacy.mixed_ghost import MixedGhostGradSampleModule

    return MixedGhostGradSampleModule(model, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm)


def _wrap_mixed_ghost_bk(model, *, max_grad_norm: float):
    from privacy.mixed_ghost import MixedGhostGradSampleModule

    return MixedGhostGradSampleModule(model, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm,
                                      book_keeping=True)


register_grad_sample_mode(GradSampleMode(
    "hooks", "Opacus' GradSampleModule: every per-sample gradient, then DPOptimizer clips and sums",
    ghost_family=False, supports_noise_multiplicity=True, wrap=_wrap_hooks))
register_grad_sample_mode(GradSampleMode(
    "ghost", "Opacus' ghost clipping: norms (Linear, Embedding; per-sample gradients elsewhere), second backward",
    ghost_family=True, supports_noise_multiplicity=False, wrap=_wrap_ghost))
register_grad_sample_mode(GradSampleMode(
    "mixed-ghost", "privacy.mixed_ghost: per-layer cost-chosen ghost norms, then Opacus' second backward",
    ghost_family=True, supports_noise_multiplicity=False, wrap=_wrap_mixed_ghost))
register_grad_sample_mode(GradSampleMode(
    "mixed-ghost-bk", "privacy.mixed_ghost: cost-chosen ghost norms and book-keeping (one backward)",
    ghost_family=True, supports_noise_multiplicity=False, wrap=_wrap_mixed_ghost_bk))
