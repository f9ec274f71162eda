"""How many threads the main process and each simulated client use: one policy, set once.

The cores are the ones this process may run on (its CPU affinity, which ``taskset``, a container
or a batch scheduler narrows), not the machine's count. Two consumers share them, never at once:

- the main process (the server during training; sampling, FID, the downstream classifier and the
  attacks after it) runs one torch thread per core, set once when ``bench run`` starts
  (:func:`set_main_threads`) and never changed mid-stage;
- a simulated federation gives Ray the same cores; each client actor reserves
  :func:`client_cpus` of them (the cores over the clients that train at once, at least one) and
  runs that many torch threads, so concurrent clients never ask for more threads than cores.

Torch's CPU kernels are OpenMP parallel regions; a thread that waits at a region's barrier spins
while the thread it waits for shares its core with another process. On a busy machine a tiny model
(thousands of small regions a second) then slows down by an order of magnitude instead of in
proportion, so the waits are passive (``OMP_WAIT_POLICY``, :func:`passive_waits`, which ``bench``
sets for every command); it must be set before torch is imported, and Ray's actors inherit it
from the driver's environment.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def client_cpus(cores: int, concurrent_clients: int) -> int:
    """Cores (and torch threads) per simulated client when ``concurrent_clients`` train at once."""
    return max(1, cores // max(1, concurrent_clients))


def passive_waits() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; call before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_main_threads() -> int:
    """The main process's torch threads: one per available core; returns the count set."""
    import torch

    n = available_cores()
    torch.set_num_threads(n)
    return n


def set_fixed_threads(n: int) -> int:
    """A given torch thread count, for a tool outside ``bench run`` that must reproduce a computation
    made with ``n`` threads (CPU kernels' sums depend on it): ``scripts/ship_pretrained.py``."""
    import torch

    torch.set_num_threads(int(n))
    return int(n)
