"""Planted defects, for auditing the audit: a DP row whose mechanism does something other than what
its plan claims, invisibly to the accountant and the server's ledger (both still charge the plan).
A planted row claims nothing as a result: it exists to show which defect the audit catches (the
``audit-power`` suite; ``plant`` in a scenario).

``noise-off``   no noise is drawn (the noise multiplier reads as planned)
``noise-x0.4``  noise at 0.4 times the calibrated standard deviation
``clip-off``    no clipping (the noise keeps the clipping norm C)
``rate-x4``     the Poisson sampler at 4 times the accounted rate (at most 1)

Each plant acts inside the mechanism's one door, where a real bug would sit, so that the model's
release and the white-box canaries see the same defect:

- ``local-dpsgd``: the DP-SGD step (:func:`privacy.dpsgd.make_dp_step` and
  :func:`privacy.dpsgd.dp_train_epochs`; per-sample clipping, the optimizer's noise, the image
  sampler) and its gradient canaries (:mod:`privacy.whitebox`);
- ``central-dp-sampled``: the server's strategy (:class:`privacy.central_sampled.PoissonSampledDP`;
  the update clip, the noise of the sum, the client sampler) and its canary clients
  (:mod:`privacy.canary_clients`);
- ``central-dp-ftrl``: the server's strategy (:class:`privacy.central_ftrl.TreeFTRL`; the update
  clip, the std of every tree node's noise) and its canary clients. It samples nobody, so
  ``rate-x4`` is refused there.

Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plant:
    name: str
    description: str
    noise_factor: float = 1.0     # the noise std actually drawn, over the planned one
    unclipped: bool = False       # per-sample clipping skipped
    rate_factor: float = 1.0      # the sampler's rate, over the accounted one (capped at 1)


PLANTS: dict[str, Plant] = {p.name: p for p in (
    Plant("noise-off", "no noise is drawn", noise_factor=0.0),
    Plant("noise-x0.4", "noise at 0.4 times the calibrated std", noise_factor=0.4),
    Plant("clip-off", "no clipping (the noise keeps C)", unclipped=True),
    Plant("rate-x4", "the Poisson sampler at 4 times the accounted rate", rate_factor=4.0),
)}


def get_plant(name: str | None) -> Plant | None:
    """The plant called ``name`` (None for None); an unknown name raises ValueError (one line)."""
    if name is None:
        return None
    try:
        return PLANTS[name]
    except KeyError:
        raise ValueError(f"unknown plant {name!r} (known: {', '.join(PLANTS)})") from None
