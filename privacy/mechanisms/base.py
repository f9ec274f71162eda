"""What a DP mechanism is: one object that validates its scenario fields, builds its server side
(the strategy and the ledger of what was spent), runs its client side (the training step and
what a reply carries), turns its record into the row's privacy columns and guarantees, and says
what an attacker of a client's update observes.

Everything outside ``privacy/`` asks the mechanism of a scenario (``get_mechanism(s.dp_mode)``,
:mod:`privacy.mechanisms`) and never branches on which one it is.

The contract, hook by hook (a new mechanism overrides what differs; :class:`Mechanism` is the
non-private default, :class:`DPMechanism` the private one):

``validate(s)``                 its own field rules; one line or None
``min_replies(s)``              valid updates a round needs (fewer: the round fails)
``data_problem(s, sizes)``      what the clients' image counts rule out (before any training)
``preflight(s, ...)``           checks that must pass before training (``bench verify-dp``)
``server_side(s, fedavg, ...)`` a :class:`ServerSide`: the strategy the reply screening wraps, the
                                sampled partitions, the spend so far and the ``privacy`` record
``train_client(s, ...)``        the local training step and the metrics a reply carries
``columns(s, record)``          the row's privacy columns from the ``privacy`` record
``guarantees(s, columns)``      every (unit, neighbouring relation, epsilon) the row can claim
``audited_epsilon(s, columns)`` the epsilon a membership audit (one image) holds the row to
``audit_claims(s, columns)``    unit -> the epsilon the audit holds that unit's tests to
``audit_canaries(s, record, seed)`` the white-box canaries it planted (:class:`Canaries`)
``attacker_view(s, columns)``   the DP a client applies before its update leaves it

The audit's place: ``audit_claims`` are the claims the one-run audit (attacks/audit.py) tests, one
per unit (``image``: what membership attacks and a local DP-SGD row's gradient canaries stand for;
``client``: a central row's canary clients). A white-box audit belongs inside the mechanism it
audits: canaries planted in ``train_client`` (a client's DP-SGD step: ``local-dpsgd``'s gradient
canaries, :mod:`privacy.whitebox`) or in the server side's strategy (``central-dp``,
``central-dp-sampled`` and ``central-dp-ftrl``'s canary clients, :mod:`privacy.canary_clients`), their scores written into
the ``privacy`` record by ``record`` and handed to the audit by ``audit_canaries``, so that what is
audited is the code that ran, not a copy of it.

This module is torch- and Flower-free: the hooks import their implementations when called.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from privacy.modes import ModeError, get_grad_sample_mode, grad_sample_mode_names

UNIFORM_WEIGHT_KEY = "dp-weight"     # what every client reports (1.0): equal weights in a DP average
EXAMPLES_WEIGHT_KEY = "num-examples"  # a client's image count: FedAvg's weights without DP
STEPS_KEY = "steps"
# A client's seconds in its train handler (set-up included) and in the training loop alone: what
# the server's per-round timing (history.json, the per-phase benchmark) compares with a round's wall time.
CLIENT_S_KEY, COMPUTE_S_KEY = "client_s", "compute_s"
TIMING_KEYS = (CLIENT_S_KEY, COMPUTE_S_KEY)

PRIVACY_COLUMNS = ("epsilon", "delta", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate")


@dataclass
class ServerSide:
    """What a mechanism puts on the server for one run.

    ``strategy``: the Flower strategy the reply screening wraps; ``sampled``: round -> the
    partitions it sampled (the server's log); ``spent()``: the epsilon of the releases so far
    (None without DP); ``record()``: history.json's ``privacy`` record after the run."""

    strategy: Any
    sampled: dict[int, list[int]]
    spent: Callable[[], float | None]
    record: Callable[[], dict]


class Canaries(NamedTuple):
    """White-box canaries a mechanism planted in one run, as the audit scores them: ``scores`` (one
    per canary), ``included`` (the coins), ``shape`` (``sample_rate`` and ``steps`` of the Poisson-
    sampled Gaussian each canary went through, for the f-DP bound; None: unknown), the ``unit``
    whose claim they test, the audit's guess design (``sides``: "both" or "in",
    :mod:`attacks.audit`, "Guess sides") and the statistic its tests read (``audit_scores``; None:
    ``scores``, which the epsilon estimate and the descriptive metrics always read)."""

    name: str
    scores: Any
    included: Any
    shape: dict | None = None
    unit: str = "image"
    sides: str = "both"
    audit_scores: Any = None   # the statistic the audit's tests read, where not ``scores`` themselves


def as_canaries(item) -> Canaries:
    """A :class:`Canaries` from what ``audit_canaries`` returned (a plain 4-tuple: image-level)."""
    return item if isinstance(item, Canaries) else Canaries(*item)


@dataclass(frozen=True)
class Guarantee:
    unit: str        # "image" or "client"
    relation: str    # the neighbouring relation the epsilon is defined for
    epsilon: float


def canary_problem(s, field: str) -> str | None:
    """The rules of a white-box canary count (``gradient_canaries``, ``client_canaries``): 0 or at
    least 2, and audited in the attack stage, so the row needs a membership attack."""
    m = getattr(s, field)
    if m < 0 or m == 1:
        return f"{field} must be 0 or at least 2, got {m}"
    if m:
        from attacks.registry import membership_attack_names

        if not set(s.attacks) & set(membership_attack_names()):
            return (f"{field} are audited in the attack stage: add a membership attack "
                    f"({', '.join(membership_attack_names())})")
    return None


def plant_problem(s) -> str | None:
    """An unknown ``plant`` (:mod:`privacy.plants`), in one line."""
    if s.plant is None:
        return None
    from privacy.plants import get_plant

    try:
        get_plant(s.plant)
    except ValueError as e:
        return str(e)
    return None


def train_plain(s, model, optimizer, images, labels, *, device: str, seed: int) -> dict:
    """``local_epochs`` epochs of non-private local training (the diffusion loss, the scenario's batch)."""
    from benchmark.model import make_scheduler, train_epochs

    return train_epochs(model, optimizer, make_scheduler(s.num_train_timesteps), images, labels,
                        epochs=s.local_epochs, batch_size=s.batch_size, conditional=s.class_conditional,
                        device=device, seed=seed)


class Mechanism:
    """The base of every mechanism, and itself ``none``: no differential privacy, FedAvg weighted
    by image counts, the loss reported."""

    name = "none"
    description = "no differential privacy"
    dp_level = ""                       # the privacy unit: "" (none), "sample" (an image) or "client"
    accountants: tuple[str, ...] = ()   # the accountants a scenario may ask for
    default_clip: float | None = None   # the clipping norm without max_grad_norm
    weight_key = EXAMPLES_WEIGHT_KEY    # what FedAvg weighs replies by
    reports_timing = True               # a reply may carry the client's TIMING_KEYS
    # Scenario fields only some mechanisms read: set for another, a scenario is refused.
    own_fields: tuple[str, ...] = ()

    @property
    def private(self) -> bool:
        return bool(self.dp_level)

    @property
    def epsilon_relation(self) -> str | None:
        """The neighbouring relation the row's ``epsilon`` holds under (its unit's); None without DP."""
        return None

    def clip(self, max_grad_norm: float | None) -> float | None:
        """The clipping norm a scenario runs with: its own, or this mechanism's default."""
        return max_grad_norm or self.default_clip

    # -- the scenario ----------------------------------------------------------------------------
    def validate(self, s) -> str | None:
        if s.target_epsilon is not None:
            return f"target_epsilon is set but dp_mode is {s.dp_mode!r}"
        if s.max_grad_norm is not None:
            return f"max_grad_norm is set but dp_mode is {s.dp_mode!r}"
        return self.foreign_fields(s)

    def foreign_fields(self, s) -> str | None:
        """Fields that only other mechanisms read, set on this one's scenario."""
        from privacy.mechanisms import mechanism_fields

        readers = mechanism_fields()
        defaults = {f.name: f.default for f in dataclasses.fields(s)}
        for field, names in readers.items():
            if field not in self.own_fields and getattr(s, field) != defaults[field]:
                fields = " and ".join(f for f in readers if readers[f] == names)
                return f"{fields} need dp_mode {' or '.join(map(repr, names))}, not {s.dp_mode!r}"
        return None

    def min_replies(self, s) -> int:
        return s.clients_per_round if s.min_clients_per_round is None else s.min_clients_per_round

    def data_problem(self, s, client_sizes: list[int]) -> str | None:
        return None

    def preflight(self, s, *, test_split: Callable[[], Any], device: str, done: dict) -> None:
        """Checks before any training (a failure raises); ``done`` maps what was checked, once per
        suite, to the line that says it passed."""

    def expected_weight(self, n_images: int) -> float:
        """The weight a client with ``n_images`` images must report (the server checks it)."""
        return float(n_images) if self.weight_key == EXAMPLES_WEIGHT_KEY else 1.0

    # -- the server --------------------------------------------------------------------------------
    def server_side(self, s, fedavg, *, partition_to_node: dict[int, int], num_images: dict[int, int],
                    seed: int = 0) -> ServerSide:
        return ServerSide(fedavg, fedavg.sampled, lambda: None, lambda: self.record(s, {}))

    # -- the client --------------------------------------------------------------------------------
    def train_client(self, s, model, optimizer, images, labels, *, device: str, seed: int, state: dict,
                     partition: int, run_seed: int) -> dict:
        """Train locally; return the metrics the reply carries besides the image count and the
        uniform weight. ``seed``: this round's training seed; ``state`` persists on the node across
        rounds (strings); ``partition`` and ``run_seed``: whose data this is, in which run (an audit's
        canaries are planted in one partition, drawn from the run seed)."""
        stats = train_plain(s, model, optimizer, images, labels, device=device, seed=seed)
        return {"train_loss": float(stats["loss"]), STEPS_KEY: int(stats["steps"])}

    # -- the record --------------------------------------------------------------------------------
    def columns(self, s, record: dict) -> dict:
        return dict.fromkeys(PRIVACY_COLUMNS)

    def guarantees(self, s, columns: dict) -> list[Guarantee]:
        return []

    def audited_epsilon(self, s, columns: dict) -> float | None:
        """The epsilon that applies to one image, what a membership audit tests; a claim this
        mechanism does not make (a planted bug) is held to as printed."""
        claimed = columns.get("epsilon")
        return None if claimed is None else float(claimed)

    def audit_claims(self, s, columns: dict) -> dict[str, float]:
        """unit -> the epsilon the audit holds that unit's tests to: the image-level claim
        (:meth:`audited_epsilon`), and every other unit the mechanism guarantees."""
        image = self.audited_epsilon(s, columns)
        if image is None:
            return {}
        return {g.unit: g.epsilon for g in self.guarantees(s, columns)} | {"image": image}

    def audit_canaries(self, s, record: dict, seed: int) -> list[Canaries]:
        """The white-box canaries this mechanism planted in a run (:class:`Canaries`), from its
        ``privacy`` record and the run seed (the coins); a known ``shape`` adds the f-DP bound."""
        return []

    def attacker_view(self, s, columns: dict) -> dict:
        """The DP a client applies to the update the server sees (:mod:`attacks.observe`)."""
        return {"clip": None, "noise_multiplier": 0.0}

    def record(self, s, fields: dict) -> dict:
        """history.json's ``privacy`` record: the mechanism, the row's figures, every guarantee
        (unit, neighbouring relation, epsilon)."""
        out = {"mechanism": self.name, **fields}
        return out | {"guarantees": [vars(g) for g in self.guarantees(s, self.columns(s, out))]}


class DPMechanism(Mechanism):
    """What every private mechanism checks and records."""

    image_relation = "add/remove one image"
    client_relation = "add/remove one client"

    @property
    def epsilon_relation(self) -> str:
        return self.client_relation if self.dp_level == "client" else self.image_relation
    # A client's compute time follows the batch sizes Poisson sampling keeps secret (and the data it
    # holds): a private mechanism's reply never carries it, whatever the server could time itself.
    reports_timing = False

    def validate(self, s) -> str | None:
        if s.target_epsilon is None or not (s.target_epsilon > 0 and math.isfinite(s.target_epsilon)):
            return f"dp_mode {s.dp_mode!r} needs target_epsilon > 0, got {s.target_epsilon}"
        if s.delta is None or not 0 < s.delta < 1:
            return f"dp_mode {s.dp_mode!r} needs delta in (0, 1), got {s.delta}"
        if self.dp_level == "client" and s.delta >= 1 / s.num_clients:
            return f"client-level delta={s.delta:g} must be below 1/num_clients = {1 / s.num_clients:g}"
        err = self.validate_own(s)
        if err:
            return err
        if s.max_grad_norm is not None and not (s.max_grad_norm > 0 and math.isfinite(s.max_grad_norm)):
            return f"max_grad_norm must be > 0, got {s.max_grad_norm}"
        if s.accountant not in self.accountants:
            return f"accountant {s.accountant!r} not available for {s.dp_mode} (known: {', '.join(self.accountants)})"
        try:
            gsm = get_grad_sample_mode(s.grad_sample_mode)
        except ModeError as e:
            return str(e)
        if s.central_clipping not in ("server", "client"):
            return f"central_clipping must be 'server' or 'client', got {s.central_clipping!r}"
        if s.noise_multiplicity < 1 or (s.noise_multiplicity > 1 and not gsm.supports_noise_multiplicity):
            able = [n for n in grad_sample_mode_names() if get_grad_sample_mode(n).supports_noise_multiplicity]
            return f"noise_multiplicity must be >= 1, and > 1 only with grad_sample_mode {' or '.join(map(repr, able))}"
        return self.foreign_fields(s)

    # Whether the mechanism draws a random sample (of images or clients) whose rate a plant can
    # change; a mechanism that samples nobody refuses the rate plants.
    samples = True

    def validate_own(self, s) -> str | None:
        """The mechanism's own rules, after the common ones on epsilon and delta."""
        return None

    def plants(self) -> tuple[str, ...]:
        """The planted defects (:mod:`privacy.plants`) that apply to this mechanism: all of them
        where it samples, else those that leave the sampling rate alone."""
        from privacy.plants import PLANTS

        return tuple(n for n, p in PLANTS.items() if self.samples or p.rate_factor == 1.0)

    def plant_rules(self, s) -> str | None:
        """For a mechanism that takes ``plant``: an unknown plant, or one that does not apply here
        (:meth:`plants`: a rate plant where nobody is sampled), in one line."""
        problem = plant_problem(s)
        if problem is None and s.plant is not None and s.plant not in self.plants():
            problem = f"plant {s.plant!r} changes a sampling rate; {s.dp_mode} samples nobody"
        return problem

    def data_problem(self, s, client_sizes: list[int]) -> str | None:
        if self.dp_level == "sample" and client_sizes:
            n = max(client_sizes)
            if s.delta >= 1 / n:
                return (f"sample-level delta={s.delta:g} must be below 1/n = {1 / n:g} (a client holds n = {n} "
                        "training images)")
        return None

    def train_client(self, s, model, optimizer, images, labels, *, device: str, seed: int, state: dict,
                     partition: int, run_seed: int) -> dict:
        # Under DP only public metadata leaves with the update: the loss is raw and data-dependent.
        stats = train_plain(s, model, optimizer, images, labels, device=device, seed=seed)
        return {STEPS_KEY: int(stats["steps"])}

    def columns(self, s, record: dict) -> dict:
        return {"epsilon": record["epsilon"], "delta": s.delta, "accountant": record["accountant"],
                "noise_multiplier": record["noise_multiplier"], "max_grad_norm": record["max_grad_norm"],
                "sample_rate": record["sample_rate"], "epsilon_target": s.target_epsilon}

    def image_epsilon(self, s, columns: dict) -> float:
        """The epsilon for one image (add/remove) of a row whose columns are ``columns``."""
        return float(columns["epsilon"])

    def guarantees(self, s, columns: dict) -> list[Guarantee]:
        image = Guarantee("image", self.image_relation, self.image_epsilon(s, columns))
        if self.dp_level == "client":
            return [Guarantee("client", self.client_relation, float(columns["epsilon"])), image]
        return [image]

    def audited_epsilon(self, s, columns: dict) -> float | None:
        if columns.get("epsilon") is None:
            return None
        return self.image_epsilon(s, columns)
