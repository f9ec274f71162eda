"""One run seed drives every generator of a run: ``derive_seed(purpose, run_seed, ...)``.

Each generator gets its own 63-bit seed from a hash of a purpose tag and the run seed (and any
other identifying values: a client's partition id, a round), so adding a generator never shifts
another's stream. Torch-free and Flower-free: every floor of the house may import it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values: one run seed drives every generator."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Inside the block torch's default CPU generator starts from ``seed``; after it, the caller's
    generator state is back as it was. For code that draws from the global generator (module
    weight initialisation): its result is fixed by ``seed`` and no other draw of the process shifts.

    Only the CPU generator is seeded (not every CUDA device's, as ``torch.manual_seed`` does):
    weights are initialised on the CPU, and ``fork_rng`` restores only the devices it saved.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield
