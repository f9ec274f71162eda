"""Canaries for the empirical audit: outliers that may be planted in one client's training data.

An audit's lower bound on epsilon is only as tight as the most vulnerable candidate it tests;
ordinary digits are far from worst case. A scenario with ``canaries = m`` draws m outlier images
(random 7x7 binary block patterns blown up to the image size, each with a random class label; no
natural image looks like them), and an independent seeded coin per canary (probability 1/2)
decides whether it goes into client 0's training data (a member) or stays out (a non-member), so
the number included is itself random, as one-run auditing requires (Steinke, Nasr, Jagielski 2023;
see :mod:`attacks.audit`). Which canary went where is recorded in the run's ``partition.json``.
Membership attacks score every canary, in canary order, and the audit bounds epsilon from them as
one experiment, next to the natural members and held-out images.

The coins come from the run seed (``derive_seed("canary-split", seed)``): they are randomness of the
audit, not of the DP mechanism, and the mechanism never sees them except through its input.

Canaries change what client 0 trains on (that is the point), so a scenario with canaries is a
different scenario (its hash differs) from the same one without.
"""

from __future__ import annotations

import numpy as np

INCLUSION_PROBABILITY = 0.5


def make_canaries(n: int, *, channels: int, resolution: int, num_classes: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` canary images (uint8 NCHW) and labels."""
    rng = np.random.default_rng(seed)
    blocks = 7
    pattern = rng.integers(0, 2, size=(n, channels, blocks, blocks)).astype(np.uint8) * 255
    reps = -(-resolution // blocks)
    images = pattern.repeat(reps, axis=2).repeat(reps, axis=3)[:, :, :resolution, :resolution]
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    return np.ascontiguousarray(images), labels


def include_canaries(m: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of the ``m`` canaries are inserted (members) and which are kept out: one independent
    fair coin each (sorted canary indices)."""
    coins = np.random.default_rng(seed).random(m) < INCLUSION_PROBABILITY
    return np.flatnonzero(coins), np.flatnonzero(~coins)
