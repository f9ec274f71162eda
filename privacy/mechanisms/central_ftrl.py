"""``central-dp-ftrl``: client-level DP-FTRL, tree-aggregated noise on the running sum of clipped
updates, with no sampling assumption (:mod:`privacy.central_ftrl`).

The server deals the ``N`` clients ``k = clients_per_round`` per round in a permutation drawn from
the public run seed, one tree epoch of ``T = N / k`` rounds after another (``N`` must be a multiple
of ``k``); each client takes part exactly once per epoch (a second participation raises). It clips
each update to C, sums, adds the sum to the epoch's tree and sets the model to the epoch's start
plus the noisy prefix sum over ``k``. The client trains without DP and its reply carries only
public metadata (equal weights, no loss, no timing).

Client level: replace-with-special (the client keeps its slot in the schedule and its update is
replaced by zero), each epoch ``SingleEpochTreeAggregationDpEvent(z, T)`` and the epochs composed
(:func:`privacy.accounting.ftrl_epsilon`). No add/remove figure is printed: removing a client would
change the deal, which this accounting does not cover. Image level: one image keeps its client in
the schedule and moves its clipped update within the C-ball, by up to ``2C``: the same tree at
sensitivity ``2C``, i.e. the same accountant at half the noise multiplier.
"""

from __future__ import annotations

from privacy.accounting import FTRL_ACCOUNTANT  # torch-free
from privacy.mechanisms.base import UNIFORM_WEIGHT_KEY, DPMechanism, ServerSide, canary_problem
from privacy.mechanisms.central import release_every_round_problem


class CentralDPFTRL(DPMechanism):
    name = "central-dp-ftrl"
    description = ("client-level DP-FTRL: each client once per tree epoch, clipped sum + tree-aggregated "
                   "noise on its prefix sums, no sampling assumption (privacy.central_ftrl)")
    dp_level = "client"
    accountants = ("rdp",)
    accountant = FTRL_ACCOUNTANT
    default_clip = 0.5      # per-update clipping norm, as the other central modes
    weight_key = UNIFORM_WEIGHT_KEY
    image_sensitivity = 2.0  # one image moves its client's clipped update by up to 2C; a client by C
    own_fields = ("client_canaries", "plant")
    samples = False          # the schedule deals every client once per epoch: no rate to plant
    client_relation = ("replace-with-special one client (it keeps its slot in the public schedule, at most once per "
                       "tree epoch; its update is replaced by zero)")
    image_relation = ("add/remove or substitute one image (its client keeps its slot in the public schedule; its "
                      "clipped update moves within the C-ball, by up to 2C)")

    def validate_own(self, s) -> str | None:
        k, n = s.clients_per_round, s.num_clients
        if k < 1 or n % k:
            return (f"{s.dp_mode} deals every client once per tree epoch: num_clients ({n}) must be a multiple of "
                    f"clients_per_round ({k})")
        return (release_every_round_problem(s) or self.plant_rules(s)
                or canary_problem(s, "client_canaries"))

    def min_replies(self, s) -> int:
        return 0  # a round with no update still releases (its tree step) and is charged

    # -- accounting -----------------------------------------------------------------------------
    def epoch_steps(self, s, rounds: int | None = None) -> tuple[int, ...]:
        """The steps of each tree epoch over ``rounds`` (default: the scenario's)."""
        from privacy.accounting import ftrl_epoch_steps

        return ftrl_epoch_steps(s.rounds if rounds is None else rounds, s.num_clients // s.clients_per_round)

    def noise_multiplier(self, s) -> float:
        """The noise for ``target_epsilon`` after all ``rounds`` (every epoch composed)."""
        from privacy.accounting import ftrl_noise

        return ftrl_noise(target_epsilon=s.target_epsilon, epoch_steps=self.epoch_steps(s), delta=s.delta)

    def image_epsilon(self, s, columns: dict) -> float:
        from privacy.accounting import AccountingError, ftrl_epsilon

        sigma = columns.get("noise_multiplier")
        if sigma is None:
            raise AccountingError(f"{s.name}: a {s.dp_mode} row needs its noise multiplier for its image-level epsilon")
        return ftrl_epsilon(noise_multiplier=float(sigma) / self.image_sensitivity, epoch_steps=self.epoch_steps(s),
                            delta=s.delta)

    # -- the server -----------------------------------------------------------------------------
    def server_side(self, s, fedavg, *, partition_to_node: dict[int, int], num_images: dict[int, int],
                    seed: int = 0, **rngs) -> ServerSide:
        """:class:`privacy.central_ftrl.TreeFTRL` in place of ``fedavg`` (it deals the clients itself,
        from the run seed; its noise from a secret generator); ``rngs``: a seeded ``noise_rng``, for
        tests only."""
        from privacy.canary_clients import TreeCanaryClients
        from privacy.central_ftrl import TreeFTRL, participation_schema
        from privacy.plants import get_plant
        from privacy.whitebox import canary_coins

        clip, z = self.clip(s.max_grad_norm), self.noise_multiplier(s)
        canaries = (TreeCanaryClients(canary_coins(s.client_canaries, seed), noise_multiplier=z)
                    if s.client_canaries else None)
        strategy = TreeFTRL(partition_to_node=partition_to_node, clients_per_round=s.clients_per_round,
                            noise_multiplier=z, clipping_norm=clip, delta=s.delta, seed=seed, canaries=canaries,
                            plant=get_plant(s.plant), **rngs)
        fields = {"noise_multiplier": z, "max_grad_norm": clip, "sample_rate": s.clients_per_round / s.num_clients,
                  "accountant": self.accountant, "clipping": "server",
                  "rounds_per_epoch": strategy.rounds_per_epoch, "planned_epoch_steps": list(self.epoch_steps(s)),
                  "participation": participation_schema(s.num_clients, s.clients_per_round)}

        def record() -> dict:
            spent = strategy.privacy_spent()
            return self.record(s, fields | {"epsilon": spent.epsilon, "delta": spent.delta,
                                            "releases": spent.num_releases, "epoch_steps": list(spent.epoch_steps)}
                               | ({"whitebox": canaries.record()} if canaries is not None else {}))

        return ServerSide(strategy, strategy.sampled, lambda: strategy.privacy_spent().epsilon, record)

    def audit_canaries(self, s, record: dict, seed: int) -> list:
        from privacy.canary_clients import audit_entry

        entry = audit_entry(record, seed)
        return [] if entry is None else [entry]

    def attacker_view(self, s, columns: dict) -> dict:
        return {"clip": None, "noise_multiplier": 0.0}  # the server clips and adds noise after the wire
