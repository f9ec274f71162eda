"""``central-dp`` and ``central-dp-sampled``: client-level DP added by the server.

``central-dp`` (:class:`CentralDP`): a fixed number of clients per round, Flower's fixed-clipping
DP wrapper around the sampling FedAvg with its noise from a secret generator
(:mod:`privacy.central`); every round is charged in full to every client (Flower's RDP
accountant, no amplification). The server (or, with ``central_clipping = "client"``, each client
through Flower's mod) clips each update to C; the noise is calibrated to ``clients_per_round``
updates, so every sampled client must deliver one.

``central-dp-sampled`` (:class:`CentralDPSampled`): Poisson participation with rate q, a clipped
sum with noise over the public ``q N``, amplified accounting, optional adaptive clipping
(:mod:`privacy.central_sampled`). A round with any number of updates releases.

Both: the client trains without DP and its reply carries only public metadata; one image (added,
removed or substituted) keeps its client in the population and can move the client's clipped
update anywhere in the ball of radius C (up to 2C apart), where the accountant charges C for a
client. ``central-dp``: every drawn client's update is in the release, so the image-level epsilon
is the same accountant at half the noise (the Gaussian at sensitivity 2C). ``central-dp-sampled``:
the client keeps its Poisson coin, so with probability q the release carries the update before or
after the change and otherwise neither: replace-one within the same sample, the sampled Gaussian's
``q N(+C) + (1-q) N(0)`` against ``q N(-C) + (1-q) N(0)`` at the row's own noise multiplier
(:func:`privacy.accounting.client_sampled_image_epsilon`, a PLD accountant), not add/remove at 2C.
"""

from __future__ import annotations

from privacy.accounting import CLIENT_ACCOUNTANT, SAMPLED_CLIENT_ACCOUNTANT  # torch-free
from privacy.mechanisms.base import UNIFORM_WEIGHT_KEY, DPMechanism, ServerSide, canary_problem


def release_every_round_problem(s) -> str | None:
    """The rules of a mechanism whose server clips and releases every round, whoever replied
    (``central-dp-sampled``, ``central-dp-ftrl``): no ``min_clients_per_round``, server-side clipping."""
    if s.min_clients_per_round is not None:
        return f"{s.dp_mode} takes no min_clients_per_round (a round with any number of updates releases)"
    if s.central_clipping != "server":
        return f"{s.dp_mode} clips on the server (central_clipping = 'server'), got {s.central_clipping!r}"
    return None


class CentralDP(DPMechanism):
    name = "central-dp"
    description = "client-level DP: the server clips updates and noises their average (Flower)"
    dp_level = "client"
    accountants = ("rdp",)
    default_clip = 0.5      # per-update clipping norm
    weight_key = UNIFORM_WEIGHT_KEY
    image_sensitivity = 2.0  # one image moves its client's clipped update by up to 2C; a client by C
    # Every drawn client's update is in the release: one image is the Gaussian at sensitivity 2C.
    image_relation = "add/remove one image (its client's clipped update moves within the C-ball, by up to 2C)"
    own_fields = ("client_canaries",)
    # A fixed number of clients a round, drawn from the public run seed: removing a client would
    # change who is drawn (its slot goes to another: the sum moves by up to 2C), so the printed
    # epsilon, the sum's sensitivity C, holds for a client that stays in the draw and whose update
    # is replaced by zero (issue 25, 4b). The draw does not look at updates, so it matches.
    client_relation = "zero-out one client (it stays in the fixed-count draw; its update is replaced by zero)"

    def validate_own(self, s) -> str | None:
        if self.min_replies(s) != s.clients_per_round:
            # Flower's DP wrapper aggregates only complete rounds (a missing client fails the round).
            return f"{s.dp_mode} needs min_clients_per_round = clients_per_round (the noise is calibrated to it)"
        return canary_problem(s, "client_canaries")

    def canary_clients(self, s, seed: int, sample_rate: float, noise_multiplier: float | None = None):
        """The run's canary clients (:mod:`privacy.canary_clients`), or None without."""
        if not s.client_canaries:
            return None
        from privacy.canary_clients import CanaryClients
        from privacy.whitebox import canary_coins

        return CanaryClients(canary_coins(s.client_canaries, seed), sample_rate=sample_rate,
                             noise_multiplier=noise_multiplier)

    def audit_canaries(self, s, record: dict, seed: int) -> list:
        from privacy.canary_clients import audit_entry

        entry = audit_entry(record, seed)
        return [] if entry is None else [entry]

    accountant = CLIENT_ACCOUNTANT  # Flower's own, attached to its wrapper

    def noise_multiplier(self, s) -> float:
        """The noise for ``target_epsilon`` after all ``rounds``, each charged in full."""
        from privacy.accounting import client_level_noise

        return client_level_noise(target_epsilon=s.target_epsilon, rounds=s.rounds, delta=s.delta,
                                  num_clients=s.num_clients)

    def epsilon(self, s, noise_multiplier: float, releases: int) -> float:
        """The epsilon of ``releases`` rounds at ``noise_multiplier`` (each charged in full)."""
        from privacy.accounting import client_level_epsilon

        return client_level_epsilon(noise_multiplier=noise_multiplier, rounds=releases, delta=s.delta,
                                    num_clients=s.num_clients, clients_per_round=s.clients_per_round)

    def spent(self, s, strategy, noise_multiplier: float) -> float:
        """The epsilon of the releases so far: Flower's accountant, attached to its wrapper."""
        return strategy.privacy_spent().epsilon

    def server_side(self, s, fedavg, *, partition_to_node: dict[int, int], num_images: dict[int, int],
                    seed: int = 0) -> ServerSide:
        from privacy.central import wrap_central_dp

        sigma, clip = self.noise_multiplier(s), self.clip(s.max_grad_norm)
        canaries = self.canary_clients(s, seed, 1.0)
        strategy = wrap_central_dp(fedavg, noise_multiplier=sigma, clipping_norm=clip,
                                   clients_per_round=s.clients_per_round, num_clients=s.num_clients,
                                   delta=s.delta, side=s.central_clipping, canaries=canaries)
        fields = {"noise_multiplier": sigma, "max_grad_norm": clip, "sample_rate": 1.0,
                  "accountant": self.accountant, "clipping": s.central_clipping}

        def record() -> dict:
            return self.record(s, fields | {"epsilon": self.spent(s, strategy, sigma), "delta": s.delta,
                                            "releases": strategy.privacy_spent().num_releases}
                               | ({"whitebox": canaries.record()} if canaries is not None else {}))

        return ServerSide(strategy, fedavg.sampled, lambda: self.spent(s, strategy, sigma), record)

    def image_epsilon(self, s, columns: dict) -> float:
        return self.epsilon(s, self._image_noise(s, columns), s.rounds)

    def _image_noise(self, s, columns: dict) -> float:
        sigma = columns.get("noise_multiplier")
        if sigma is None:
            from privacy.accounting import AccountingError

            raise AccountingError(f"{s.name}: a {s.dp_mode} row needs its noise multiplier for its image-level epsilon")
        return float(sigma) / self.image_sensitivity

    def attacker_view(self, s, columns: dict) -> dict:
        if s.central_clipping == "client":  # Flower's mod clips the whole update before it leaves
            return {"clip": float(columns["max_grad_norm"]), "noise_multiplier": 0.0, "clip_whole_update": True}
        return {"clip": None, "noise_multiplier": 0.0}  # the server clips and adds noise after the wire


class CentralDPSampled(CentralDP):
    name = "central-dp-sampled"
    description = ("client-level DP: Poisson-sampled clients, clipped sum + noise over q N, amplified "
                   "accounting (privacy.central_sampled)")
    own_fields = ("client_sample_rate", "adaptive_clipping", "client_canaries", "plant")
    accountant = SAMPLED_CLIENT_ACCOUNTANT
    # Poisson sampling draws each client on its own: removing one changes no other's draw.
    client_relation = "add/remove one client"
    # One image keeps its client in the population and in the Poisson sample (issue 25, 4c).
    image_relation = ("add/remove or substitute one image (its client stays in the Poisson sample; the client's "
                      "clipped update is replaced within the C-ball)")

    def validate_own(self, s) -> str | None:
        return self._sampling_problem(s) or self.plant_rules(s) or canary_problem(s, "client_canaries")

    def _sampling_problem(self, s) -> str | None:
        q = s.client_sample_rate
        if q is None or not 0 < q <= 1:
            return f"{s.dp_mode} needs client_sample_rate in (0, 1], got {q}"
        expected = max(1, round(q * s.num_clients))
        if s.clients_per_round != expected:
            return (f"{s.dp_mode}: clients_per_round must be the expected count round(q N) = {expected} "
                    f"(q = {q:g}, N = {s.num_clients}), got {s.clients_per_round}")
        return release_every_round_problem(s)

    def min_replies(self, s) -> int:
        return 0  # a round with no update still releases (noise only) and is charged

    def noise_multiplier(self, s) -> float:
        from privacy.accounting import client_sampled_noise

        return client_sampled_noise(target_epsilon=s.target_epsilon, sample_rate=float(s.client_sample_rate),
                                    rounds=s.rounds, delta=s.delta)

    def server_side(self, s, fedavg, *, partition_to_node: dict[int, int], num_images: dict[int, int],
                    seed: int = 0, **rngs) -> ServerSide:
        """:class:`privacy.central_sampled.PoissonSampledDP` in place of ``fedavg`` (it samples
        itself, from a secret generator); ``rngs``: seeded generators, for tests only."""
        from privacy.accounting import adaptive_update_noise, default_count_noise
        from privacy.central_sampled import AdaptiveClipping, PoissonSampledDP
        from privacy.plants import get_plant

        q, clip, z = float(s.client_sample_rate), self.clip(s.max_grad_norm), self.noise_multiplier(s)
        adaptive = None
        if s.adaptive_clipping:
            adaptive = AdaptiveClipping(count_noise=default_count_noise(expected_clients=q * s.num_clients,
                                                                        noise_multiplier=z))
        canaries = self.canary_clients(s, seed, q, z)
        strategy = PoissonSampledDP(partition_to_node=partition_to_node, sample_rate=q, noise_multiplier=z,
                                    clipping_norm=clip, delta=s.delta, adaptive=adaptive, canaries=canaries,
                                    plant=get_plant(s.plant), **rngs)
        fields = {"noise_multiplier": z, "max_grad_norm": clip, "sample_rate": q,
                  "accountant": self.accountant, "clipping": "server", "expected_clients": q * s.num_clients,
                  "update_noise_multiplier": adaptive_update_noise(z, adaptive.count_noise) if adaptive else z}
        if adaptive is not None:
            fields |= {"adaptive_clipping": True, "count_noise": adaptive.count_noise,
                       "target_quantile": adaptive.target_quantile, "clip_learning_rate": adaptive.learning_rate}

        def record() -> dict:
            spent = strategy.privacy_spent()
            return self.record(s, fields | {"epsilon": spent.epsilon, "delta": spent.delta,
                                            "releases": spent.num_releases}
                               | ({"whitebox": canaries.record()} if canaries is not None else {}))

        return ServerSide(strategy, strategy.sampled, lambda: strategy.privacy_spent().epsilon, record)

    def image_epsilon(self, s, columns: dict) -> float:
        # Replace-one within the same Poisson sample, at the row's own noise multiplier and client rate q
        # (privacy.accounting.client_sampled_image_epsilon). With adaptive clipping the noise multiplier is
        # the effective z of both releases: an image also flips its client's centred count bit from -1/2
        # to +1/2, a replacement within the same ball of the combined vector, so the same formula holds.
        from privacy.accounting import AccountingError, client_sampled_image_epsilon

        sigma, q = columns.get("noise_multiplier"), columns.get("sample_rate")
        if sigma is None or q is None:
            raise AccountingError(f"{s.name}: a {s.dp_mode} row needs its noise multiplier and client sample rate "
                                  "for its image-level epsilon")
        return client_sampled_image_epsilon(noise_multiplier=float(sigma), sample_rate=float(q), rounds=s.rounds,
                                            delta=s.delta)

    def attacker_view(self, s, columns: dict) -> dict:
        return {"clip": None, "noise_multiplier": 0.0}  # the server clips and adds noise after the wire
