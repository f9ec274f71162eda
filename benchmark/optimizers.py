"""The clients' optimizers by name: the one registry of a scenario's ``optimizer``.

Torch-free: scenario validation reads the names without importing torch; an entry's builder
imports torch when a client builds its optimizer (:func:`benchmark.federation.task.make_optimizer`).

``sgd`` is plain SGD (no momentum): under DP-SGD its step moves the weights by the learning rate
times the noised gradient, so the noise's effect grows with the noise multiplier; ``adam`` divides
by the gradient's running scale and takes steps of about the learning rate whatever the noise.
"""

from __future__ import annotations

from collections.abc import Callable


class UnknownOptimizerError(ValueError):
    """An optimizer name that is not in :data:`OPTIMIZERS` (one line)."""


def _adam(params, *, lr: float):
    import torch

    return torch.optim.Adam(params, lr=lr)


def _sgd(params, *, lr: float):
    import torch

    return torch.optim.SGD(params, lr=lr)


# name -> builder (parameters, *, lr -> a torch optimizer)
OPTIMIZERS: dict[str, Callable] = {"adam": _adam, "sgd": _sgd}


def get_optimizer(name: str) -> Callable:
    """The builder of optimizer ``name``; an unknown name is refused in one line."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise UnknownOptimizerError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})") from None
