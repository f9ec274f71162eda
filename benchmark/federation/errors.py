"""The federation's errors (one-line messages; the CLI exits 4 on them)."""

from __future__ import annotations


class FederationError(RuntimeError):
    """The federation could not run as configured (one-line message)."""


class RoundFailedError(FederationError):
    """Fewer than the minimum number of valid client updates arrived in a round."""
