"""The DP modes of a scenario and the grad-sample modes of DP-SGD: each defined once, here.

Two registries of frozen entries, read by everything that used to re-derive a mode's meaning from
its name (scenario validation, the runner's privacy columns and verify gate, the leaderboard's
``dp_level``, the federation's server and client apps, the attacker's view, the CLI's ``--modes``):

``DPMode``          ``none``, ``local-dpsgd``, ``central-dp``, ``central-dp-sampled``: the privacy
                    unit (``dp_level``), who adds noise (clients through DP-SGD, or the server),
                    which accountants apply, the default clipping norm, how the server samples
                    clients (fixed or Poisson).
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
    """An unknown or duplicate DP / grad-sample mode (one-line message)."""


# ----------------------------------------------------------------------------------- DP modes
@dataclass(frozen=True)
class DPMode:
    name: str
    description: str
    dp_level: str                    # the privacy unit: "" (no DP), "sample" (an image) or "client"
    clients_run_dpsgd: bool          # clients clip per sample and add noise (Opacus) before sending
    server_adds_noise: bool          # the server clips updates and noises the aggregate (Flower)
    accountants: tuple[str, ...]     # the accountants a scenario may ask for
    default_clip: float | None       # per-sample clip (local) / per-update clip (central)
    # central DP: "fixed" (Flower's wrappers: a fixed number of clients per round, no amplification)
    # or "poisson" (privacy.central_sampled: each client in with probability q, amplified accounting)
    client_sampling: str = "fixed"
    # How far one image can move what the accountant bounds, in multiples of the sensitivity the
    # accountant charges for its unit: 1 where the unit is an image; 2 where it is a client (one
    # image can move a client's clipped update anywhere in the ball of radius C: up to 2C apart).
    # The image-level guarantee is the same accountant at noise multiplier / image_sensitivity
    # (privacy.accounting.image_level_epsilon). None without DP.
    image_sensitivity: float | None = None

    @property
    def private(self) -> bool:
        return self.clients_run_dpsgd or self.server_adds_noise

    @property
    def sample_level(self) -> bool:
        """One image is the privacy unit: delta must be below 1/n for every client's n images."""
        return self.dp_level == "sample"

    @property
    def client_level(self) -> bool:
        """One client is the privacy unit: delta must be below 1/num_clients."""
        return self.dp_level == "client"

    def clip(self, max_grad_norm: float | None) -> float | None:
        """The clipping norm a scenario runs with: its own, or this mode's default."""
        return max_grad_norm or self.default_clip


_DP_MODES: dict[str, DPMode] = {}


def register_dp_mode(mode: DPMode) -> DPMode:
    if mode.name in _DP_MODES:
        raise ModeError(f"DP mode {mode.name!r} is already registered")
    _DP_MODES[mode.name] = mode
    return mode


def get_dp_mode(name: str) -> DPMode:
    try:
        return _DP_MODES[name]
    except (KeyError, TypeError):
        raise ModeError(f"unknown dp_mode {name!r} (known: {', '.join(_DP_MODES)})") from None


def dp_mode_names() -> tuple[str, ...]:
    return tuple(_DP_MODES)


NO_DP = register_dp_mode(DPMode(
    "none", "no differential privacy", dp_level="", clients_run_dpsgd=False, server_adds_noise=False,
    accountants=(), default_clip=None))
LOCAL_DPSGD = register_dp_mode(DPMode(
    "local-dpsgd", "sample-level DP: every client trains with DP-SGD (Opacus)", dp_level="sample",
    clients_run_dpsgd=True, server_adds_noise=False, accountants=("rdp", "prv"), default_clip=1.0,
    image_sensitivity=1.0))
CENTRAL_DP = register_dp_mode(DPMode(
    "central-dp", "client-level DP: the server clips updates and noises their average (Flower)",
    dp_level="client", clients_run_dpsgd=False, server_adds_noise=True, accountants=("rdp",), default_clip=0.5,
    image_sensitivity=2.0))
CENTRAL_DP_SAMPLED = register_dp_mode(DPMode(
    "central-dp-sampled", "client-level DP: Poisson-sampled clients, clipped sum + noise over q N, amplified "
    "accounting (privacy.central_sampled)", dp_level="client", clients_run_dpsgd=False, server_adds_noise=True,
    accountants=("rdp",), default_clip=0.5, client_sampling="poisson", image_sensitivity=2.0))


# --------------------------------------------------------------------------- grad-sample modes
@dataclass(frozen=True)
class GradSampleMode:
    name: str
    description: str
    ghost_family: bool                   # norms without kept per-sample gradients, clipped sum after
    supports_noise_multiplicity: bool    # K draws per image averaged before clipping (needs grad_sample)
    wrap: Callable[..., Any]             # (model, *, max_grad_norm) -> Opacus grad-sample module


_GRAD_SAMPLE_MODES: dict[str, GradSampleMode] = {}


def register_grad_sample_mode(mode: GradSampleMode) -> GradSampleMode:
    if mode.name in _GRAD_SAMPLE_MODES:
        raise ModeError(f"grad_sample_mode {mode.name!r} is already registered")
    _GRAD_SAMPLE_MODES[mode.name] = mode
    return mode


def get_grad_sample_mode(name: str) -> GradSampleMode:
    try:
        return _GRAD_SAMPLE_MODES[name]
    except (KeyError, TypeError):
        raise ModeError(f"unknown grad_sample_mode {name!r} (known: {', '.join(_GRAD_SAMPLE_MODES)})") from None


def grad_sample_mode_names() -> tuple[str, ...]:
    return tuple(_GRAD_SAMPLE_MODES)


@contextlib.contextmanager
def registered(mode: DPMode | GradSampleMode) -> Iterator[DPMode | GradSampleMode]:
    """``mode`` is registered inside the block and removed after it (tests of a new mode)."""
    table = _DP_MODES if isinstance(mode, DPMode) else _GRAD_SAMPLE_MODES
    (register_dp_mode if isinstance(mode, DPMode) else register_grad_sample_mode)(mode)
    try:
        yield mode
    finally:
        del table[mode.name]


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
