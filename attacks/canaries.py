"""Canaries for the empirical audit: outliers planted in one client's training data.

An audit's lower bound on epsilon is only as tight as the most vulnerable candidate it tests;
ordinary digits are far from worst case. A scenario with ``canaries = k`` draws 2k outlier images
(random 7x7 binary block patterns blown up to the image size, each with a random class label; no
natural image looks like them), then a seeded coin puts exactly k of them into client 0's training
data (members) and keeps the other k out (non-members). Which canary went where is recorded in the
run's ``partition.json``. Membership attacks score both halves and the audit bounds epsilon from
them, next to the natural members and held-out images.

Canaries change what client 0 trains on (that is the point), so a scenario with canaries is a
different scenario (its hash differs) from the same one without.
"""

from __future__ import annotations

import numpy as np


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


def split_canaries(n_pairs: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of the 2 * n_pairs canaries are inserted (members) and which are kept out."""
    order = np.random.default_rng(seed).permutation(2 * n_pairs)
    return np.sort(order[:n_pairs]), np.sort(order[n_pairs:])
