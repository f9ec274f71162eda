"""The one source of the DP mechanisms' randomness: seeds from OS entropy, never from the run seed.

A DP guarantee holds only against someone who cannot predict the mechanism's noise. The run seed
is published (``scenario.json``, the leaderboard's ``seeds`` column), so nothing a DP mechanism
draws may derive from it: whoever read the results could replay training on D and on D plus one
image and tell them apart. Every DP draw in this benchmark therefore comes from a generator made
here, each seeded from the OS's CSPRNG (:mod:`secrets`, i.e. ``os.urandom``) when it is made:

* local DP-SGD (:func:`privacy.dpsgd.dp_train_epochs`): the Poisson batch sampling and the
  Gaussian noise of every step (one generator each, per client and round);
* central DP (:mod:`privacy.central`): the Gaussian noise the server adds to the aggregate
  (instead of Flower's draw from numpy's *global, unseeded* RNG).

What this is, exactly: the **seed** is cryptographically random (63 bits for torch, 128 for
numpy) and is never returned to a caller, logged or written to any file; the **generators** are
torch's (``torch.Generator``: Mersenne Twister on CPU, Philox on CUDA) and numpy's (PCG64)
ordinary PRNGs, *not* CSPRNGs. An adversary who saw enough raw outputs of one of them could in
principle recover its state; the mechanism only ever releases outputs with data-dependent values
added, so we treat the seed's secrecy as the guarantee's basis, as Opacus does outside its
``secure_mode``. A real CSPRNG stream for torch needs ``torchcsprng`` (what Opacus'
``PrivacyEngine(secure_mode=True)`` imports), which is not maintained for torch 2 and is not a
dependency here. What we do take from Opacus' secure mode is its optimizer half, which needs no
``torchcsprng``: :func:`privacy.dpsgd.make_dp_step` builds the DP optimizer with
``secure_mode=True``, which draws each noise value as the sum of four Gaussians (halved) against
floating-point attacks on the Gaussian sampler (Holohan and Braghin 2021; Jin et al. 2022).

Server-side Gaussian noise (:mod:`privacy.central`, :mod:`privacy.central_sampled`) is drawn the same
floating-point-safe way (:func:`secure_normal`: the halved sum of four Gaussians, as Opacus'
``_generate_noise`` in secure mode), not by one ``normal`` draw.

The run seed keeps driving everything else (partition, initialisation, client sampling, the
diffusion noise and timesteps of local training, sampling, evaluation), so non-DP runs are
bit-reproducible and DP runs reproducible up to the DP noise.

This module imports neither torch nor numpy at import time (torch-free layers may import it).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    import numpy as np
    import torch

TORCH_SEED_BITS = 63   # torch.Generator.manual_seed takes a 64-bit integer
NUMPY_SEED_BITS = 128  # numpy's SeedSequence takes any entropy; PCG64's state is 128 bits


def secret_seed(bits: int = TORCH_SEED_BITS) -> int:
    """A fresh seed from the OS's CSPRNG. Use it to seed one generator and then drop it: never
    return it further, log it or store it."""
    return secrets.randbits(bits)


def secret_torch_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded from OS entropy (the generator itself is torch's PRNG)."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(secret_seed(TORCH_SEED_BITS))
    return generator


def secret_numpy_rng() -> np.random.Generator:
    """A numpy generator (PCG64) seeded from OS entropy (the generator itself is numpy's PRNG)."""
    import numpy as np

    return np.random.default_rng(secret_seed(NUMPY_SEED_BITS))


def secure_normal(rng: np.random.Generator, std: float, shape) -> np.ndarray:
    """N(0, std^2) values of ``shape`` as Opacus' secure mode draws them: the sum of four independent
    N(0, std^2) draws, halved (same distribution, and a floating-point attack on one Gaussian
    sampler's low-order bits no longer applies; Holohan and Braghin 2021). float64."""
    import numpy as np

    return rng.normal(0.0, std, size=(4, *tuple(shape))).sum(axis=0) / 2.0
