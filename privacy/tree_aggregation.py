"""Tree-aggregated Gaussian noise for DP-FTRL (Kairouz et al. 2021), and its participation rule.

DP-FTRL ("Practical and Private (Deep) Learning without Sampling or Shuffling") needs no client
sampling: at every step ``t`` (1-based) the server releases the prefix sum ``v_1 + ... + v_t`` of
the (clipped, summed) client contributions with the noise of a binary tree over the steps. The
tree's node ``(level j, index k)`` covers steps ``k 2^j + 1 .. (k + 1) 2^j``; ``[1, t]`` is the
disjoint union of the ``popcount(t)`` nodes read off ``t``'s binary digits (the dyadic
decomposition: one node of size ``2^j`` per set bit ``j``, largest first). Each node's noise is
drawn **once**, when the node is first needed (at its last step), and reused by every later
prefix that contains it, so the noise of the step-``t`` release has variance ``std^2 popcount(t)``
per coordinate and the releases at ``s`` and ``t`` share the noise of their common nodes.

Privacy (:func:`privacy.accounting.ftrl_tree_epsilon`): the releases are post-processing of the
noisy nodes. Replacing one client's contribution (clipped to ``C``) by the special zero one moves
one leaf by at most ``C``, and one leaf lies in at most ``ceil(log2(T + 1))`` of the nodes a tree
of ``T`` steps releases, so with ``std = noise_multiplier * C`` the tree is the Gaussian mechanism
at sensitivity ``sqrt(ceil(log2(T + 1))) C``, **provided each client contributes at most once per
tree** (:class:`ParticipationGuard`). :meth:`TreeAggregator.restart` starts a new tree (a new
epoch): fresh nodes, fresh noise.

The noise is the project's server-side noise: :func:`privacy.noise.secure_normal` (the halved sum
of four Gaussians, as Opacus' secure mode draws it), from a generator seeded from OS entropy
(:func:`privacy.noise.secret_numpy_rng`) unless a test passes its own. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable

import numpy as np

from privacy.noise import secret_numpy_rng, secure_normal


def tree_depth(steps: int) -> int:
    """Levels of the tree one leaf can lie in over ``steps`` steps: ``ceil(log2(steps + 1))``
    (the number of binary digits of ``steps``: nodes of size ``2^j <= steps``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return int(steps).bit_length()


class TreeAggregator:
    """Online binary-tree aggregation: :meth:`add` the step's value, get the noisy prefix sum.

    ``shape``: the shape of every value; ``std``: the noise std per tree node and coordinate
    (``noise_multiplier * clip``; 0 releases the exact prefix sums); ``rng``: a numpy generator
    (default: a fresh one seeded from OS entropy; pass one only in tests); ``max_steps``: if set,
    the steps the accounting was done for, and a step beyond it is refused until :meth:`restart`.

    State: the nodes of the current step's dyadic decomposition, as (level, exact sum, noise),
    largest first. Step ``t + 1`` closes one node of level ``j = trailing zeros of t + 1``: it covers
    the ``j`` smallest nodes of step ``t``'s decomposition (levels ``0 .. j - 1``) and the new value,
    and gets its own fresh noise; the noises of the nodes it replaces are never used again.
    """

    def __init__(self, shape: tuple[int, ...] | int, std: float, rng: np.random.Generator | None = None, *,
                 max_steps: int | None = None):
        if not (std >= 0 and math.isfinite(std)):
            raise ValueError(f"noise std must be finite and >= 0, got {std}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.std = float(std)
        self.rng = rng if rng is not None else secret_numpy_rng()
        self.max_steps = max_steps
        self.restart()

    @property
    def step(self) -> int:
        """Steps added since the last (re)start."""
        return self._step

    def restart(self) -> None:
        """A new tree (a new epoch): no nodes, step 0; the next nodes draw fresh noise."""
        self._step = 0
        self._nodes: list[tuple[int, np.ndarray, np.ndarray]] = []  # (level, exact sum, noise), largest first

    def add(self, value, *, step: int | None = None) -> np.ndarray:
        """Add step ``t``'s value and return the noisy prefix sum of steps ``1..t`` (float64).

        ``step``, if given, must be the next step (1-based, ``self.step + 1``): a skipped or
        repeated step is refused rather than silently misplaced in the tree."""
        t = self._step + 1
        if step is not None and step != t:
            raise ValueError(f"expected step {t} of this tree, got step {step}")
        if self.max_steps is not None and t > self.max_steps:
            raise ValueError(f"step {t} is beyond the tree's {self.max_steps} accounted steps: restart() first")
        value = np.asarray(value, dtype=np.float64)
        if value.shape != self.shape:
            raise ValueError(f"value has shape {value.shape}, the tree's is {self.shape}")
        level = (t & -t).bit_length() - 1  # trailing zeros of t: the new node's level
        total = value.copy()
        for _ in range(level):  # the closed node absorbs the smaller nodes (levels level-1 .. 0)
            _level, part, _noise = self._nodes.pop()
            total += part
        assert not self._nodes or self._nodes[-1][0] > level, "dyadic decomposition out of order"
        noise = secure_normal(self.rng, self.std, self.shape) if self.std > 0 else np.zeros(self.shape)
        self._nodes.append((level, total, noise))
        self._step = t
        return self.prefix_sum()

    def prefix_sum(self) -> np.ndarray:
        """The current release: the sum over the decomposition's nodes of exact sum plus noise."""
        out = np.zeros(self.shape)
        for _level, part, noise in self._nodes:
            out += part + noise
        return out

    def node_levels(self) -> list[int]:
        """The levels of the current decomposition's nodes, largest first (``popcount(step)`` of them)."""
        return [level for level, _part, _noise in self._nodes]


class ParticipationGuard:
    """Refuses a client taking part twice within one tree epoch (the DP-FTRL accounting's
    assumption: at most one contribution per client between restarts).

    :meth:`admit` is one step's participants; it checks all of them before recording any, so a
    refused step records nothing. :meth:`restart` (with the tree's) forgets the epoch."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._seen: dict[Hashable, int] = {}
        self._step = 0

    def admit(self, clients: Iterable[Hashable]) -> None:
        clients = list(clients)
        t = self._step + 1
        here: set[Hashable] = set()
        for c in clients:
            if c in self._seen:
                raise ValueError(f"client {c!r} already took part in step {self._seen[c]} of this tree epoch: "
                                 "DP-FTRL allows one participation per client between tree restarts")
            if c in here:
                raise ValueError(f"client {c!r} appears twice in step {t}: DP-FTRL allows one participation "
                                 "per client between tree restarts")
            here.add(c)
        self._seen.update(dict.fromkeys(clients, t))
        self._step = t

    def has_taken_part(self, client: Hashable) -> bool:
        return client in self._seen
