"""A DP mechanism kept out of the tree, registered through ``$FEDDP_PLUGINS``: ``central-dp-pld``.

Central DP with Flower's fixed-clipping wrapper, as ``central-dp``, but its noise is calibrated
and its spend accounted with Google's dp_accounting privacy-loss-distribution (PLD) accountant
instead of Flower's RDP one: the same Gaussian releases (no amplification, zero-out one client),
a tighter accountant, hence less noise for the same epsilon. Its module is this file, and its one
registry line is the last line.
"""

from privacy.mechanisms import register_mechanism
from privacy.mechanisms.central import CentralDP


def pld_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    import dp_accounting

    if releases == 0:
        return 0.0
    acc = dp_accounting.pld.PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    acc.compose(dp_accounting.GaussianDpEvent(noise_multiplier), releases)
    return float(acc.get_epsilon(delta))


class CentralDPPLD(CentralDP):
    name = "central-dp-pld"
    description = "client-level DP: Flower's fixed-clipping wrapper, noise from a PLD accountant"
    accountant = "dp-accounting-pld-no-amplification"

    def noise_multiplier(self, s) -> float:
        lo, hi = 0.05, 64.0  # bisection to 0.1%: the smallest noise whose epsilon <= target
        while hi - lo > 1e-3 * hi:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if pld_epsilon(mid, s.rounds, s.delta) > s.target_epsilon else (lo, mid)
        return hi

    def epsilon(self, s, noise_multiplier: float, releases: int) -> float:
        return pld_epsilon(noise_multiplier, releases, s.delta)

    def spent(self, s, strategy, noise_multiplier: float) -> float:
        return self.epsilon(s, noise_multiplier, strategy.privacy_spent().num_releases)


register_mechanism(CentralDPPLD())
