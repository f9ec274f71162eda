"""One run seed drives every generator of a run: ``derive_seed(purpose, run_seed, ...)``.

Each generator gets its own 63-bit seed from a hash of a purpose tag and the run seed (and any
other identifying values: a client's partition id, a round), so adding a generator never shifts
another's stream. Torch-free and Flower-free: every floor of the house may import it.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values: one run seed drives every generator."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1
