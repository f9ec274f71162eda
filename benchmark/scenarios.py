"""Scenarios, scales and suites.

A :class:`Scenario` is a frozen description of one federated experiment (dataset, partition,
federation, model, privacy settings, evaluation budget). Suites are functions of a :class:`Scale`
that return scenarios with stable names: the same suite at ``cpu`` and at ``gpu`` scale has the same
scenario names but different sizes, and therefore different scenario hashes, so runs of different
sizes never mix in a leaderboard. Seeds are not part of a scenario's identity: a run is
``(scenario, seed)``.

Construction is light (validation only); all heavy work happens in :mod:`benchmark.runner`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from attacks.registry import attack_names, membership_attack_names
from benchmark.model_configs import MODEL_CONFIGS
from benchmark.partition import PartitionError, parse_scheme
from privacy.modes import ModeError, get_dp_mode, get_grad_sample_mode, grad_sample_mode_names  # torch-free

ATTACKS = attack_names()  # the attack registry, in declaration order (torch-free)
MEMBERSHIP_ATTACKS = tuple(a for a in ATTACKS if a in membership_attack_names())  # no client update needed
SAMPLERS = ("ddim", "ddpm", "dpm-solver")
OPTIMIZERS = ("adam", "sgd")


# Added in issue 8; at these values a scenario's hash is what it was before they existed.
HASH_NEUTRAL_DEFAULTS = {"min_clients_per_round": None, "round_timeout_s": None, "canaries": 0,
                         # issue 18: Poisson client sampling (central-dp-sampled)
                         "client_sample_rate": None, "adaptive_clipping": False,
                         # issue 16: public pretraining (benchmark.pretrain)
                         "pretrain": None, "pretrain_epochs": 0, "optimizer": "adam",
                         # issue 16: the downstream classifier's own, larger sample
                         "downstream_n_samples": None}


class ScenarioError(ValueError):
    """A scenario, suite or scenario file is invalid; the message is one line."""


@dataclass(frozen=True)
class Scenario:
    name: str
    dataset: str = "mnist-embedded"
    partition: str = "iid"
    num_clients: int = 4
    clients_per_round: int = 2
    rounds: int = 2
    local_epochs: int = 1
    model: str = "unet-tiny"
    class_conditional: bool = False
    dp_mode: str = "none"                   # privacy.modes: none, local-dpsgd, central-dp, central-dp-sampled
    target_epsilon: float | None = None
    delta: float | None = None
    max_grad_norm: float | None = None      # per-sample clip (local) / per-update clip (central)
    accountant: str = "rdp"                 # local: rdp or prv (Opacus); central: rdp (Flower's)
    grad_sample_mode: str = "hooks"         # local DP-SGD (privacy.modes): hooks, ghost, mixed-ghost, ...
    noise_multiplicity: int = 1             # local DP-SGD: noise draws per image (DPDM)
    central_clipping: str = "server"        # central DP: Flower's server- or client-side clipping
    attacks: tuple[str, ...] = ()
    canaries: int = 0                       # audit: m outliers, each put in client 0 by a fair coin
    max_train_images: int | None = None
    heldout_fraction: float = 0.2
    batch_size: int = 32
    learning_rate: float = 2e-4
    optimizer: str = "adam"                 # the clients' optimizer: adam or sgd (plain, no momentum)
    num_train_timesteps: int = 1000
    sampler: str = "ddim"
    sample_steps: int = 20
    fid_n_samples: int = 200
    fid_impl: str = "clean"                 # clean (offline clean-fid network) or pytorch-fid
    # Class-balanced generated images the downstream classifier trains on (class-conditional
    # scenarios); None: the fid_n_samples FID samples. FID always scores the first fid_n_samples.
    downstream_n_samples: int | None = None
    seeds: tuple[int, ...] = (0,)
    suite: str = "custom"
    scale: str = "cpu"
    # Faulty clients (see benchmark/federation/server_app.py). None: every sampled client must
    # deliver a valid update, and Flower's 3600 s reply timeout.
    min_clients_per_round: int | None = None
    round_timeout_s: float | None = None
    # central-dp-sampled (privacy.central_sampled): each client takes part in a round with this
    # probability q (clients_per_round must be round(q N), the expected count), and optionally
    # the quantile-based adaptive clipping of Andrew et al. 2021.
    client_sample_rate: float | None = None
    adaptive_clipping: bool = False
    # Public pretraining (benchmark.pretrain): the global model starts from a checkpoint trained
    # without privacy on this public dataset for pretrain_epochs epochs (cached). rounds = 0 with a
    # pretrain is the public-only reference: no private image touches the model.
    pretrain: str | None = None
    pretrain_epochs: int = 0

    @property
    def poisson_clients(self) -> bool:
        """Clients take part independently with probability ``client_sample_rate`` (no fixed count)."""
        try:
            return get_dp_mode(self.dp_mode).client_sampling == "poisson"
        except ModeError:
            return False

    @property
    def min_replies(self) -> int:
        """Valid updates a round needs; fewer and the round (and the run) fails. Under Poisson
        sampling none: a round with no update still releases (noise only) and is charged."""
        if self.poisson_clients:
            return 0
        return self.clients_per_round if self.min_clients_per_round is None else self.min_clients_per_round

    def __post_init__(self) -> None:
        _check_types(self)
        err = _validate(self)
        if err:
            raise ScenarioError(f"scenario {self.name!r}: {err}")

    # Identity -----------------------------------------------------------------------------
    def definition(self) -> dict:
        """Every field that changes what a run computes (not the seeds, not the suite).

        Fields added after results were published (``HASH_NEUTRAL_DEFAULTS``) enter the
        definition only when set to something else than their default, so the hashes of
        existing scenarios, and the run folders and leaderboards named by them, stay valid.
        A scenario with attacks also carries its scale's attack budget (``attacks.base.BUDGETS``).
        """
        d = dataclasses.asdict(self)
        d.pop("seeds")
        d.pop("suite")
        for key, default in HASH_NEUTRAL_DEFAULTS.items():
            if d[key] == default:
                d.pop(key)
        if self.attacks:
            # The attack budget comes with the scale; a changed budget is a different experiment.
            from attacks.base import BUDGETS

            d["attack_budget"] = BUDGETS[self.scale].to_dict()
        return d

    @property
    def hash(self) -> str:
        blob = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["attacks"] = list(self.attacks)
        d["seeds"] = list(self.seeds)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "scenario") -> "Scenario":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ScenarioError(
                f"{source}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        if "name" not in data:
            raise ScenarioError(f"{source}: missing required field 'name'")
        values = dict(data)
        for key in ("attacks", "seeds"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "Scenario":
        return cls.from_dict(json.loads(text))


# Type checking of fields (TOML and JSON give us plain values) -------------------------------
_HINTS = None


def _check_types(s: Scenario) -> None:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(Scenario)
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if not _is_instance(value, _HINTS[f.name]):
            raise ScenarioError(
                f"scenario {s.name!r}: field {f.name!r} must be {_type_name(_HINTS[f.name])}, "
                f"got {type(value).__name__} {value!r}"
            )


def _is_instance(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        return isinstance(value, tuple) and all(_is_instance(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an integer literal is a fine float ("epsilon = 4")
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return "none" if hint is type(None) else hint.__name__


def _validate(s: Scenario) -> str | None:
    """Return the first problem found, as one line, or None."""
    from benchmark.data import dataset_names

    if not s.name or any(c in s.name for c in "/\\ \t\n"):
        return "name must be non-empty without slashes or spaces"
    if s.dataset not in dataset_names() and not s.dataset.startswith("medmnist:"):
        return f"unknown dataset {s.dataset!r} (known: {', '.join(dataset_names())}, medmnist:<name>)"
    try:
        parse_scheme(s.partition)
    except PartitionError as e:
        return str(e)
    if s.num_clients < 1:
        return f"num_clients must be >= 1, got {s.num_clients}"
    if not 1 <= s.clients_per_round <= s.num_clients:
        return (
            f"clients_per_round must be in [1, num_clients={s.num_clients}], got {s.clients_per_round}"
        )
    if s.min_clients_per_round is not None and not 1 <= s.min_clients_per_round <= s.clients_per_round:
        return (f"min_clients_per_round must be in [1, clients_per_round={s.clients_per_round}], "
                f"got {s.min_clients_per_round}")
    if s.round_timeout_s is not None and not (s.round_timeout_s > 0 and math.isfinite(s.round_timeout_s)):
        return f"round_timeout_s must be a positive number of seconds, got {s.round_timeout_s}"
    if s.pretrain is not None:
        if s.pretrain not in dataset_names():
            return f"unknown pretrain dataset {s.pretrain!r} (known: {', '.join(dataset_names())})"
        if s.pretrain == s.dataset:
            return f"pretrain names the private dataset {s.dataset!r}: public pretraining needs other (public) data"
        if s.pretrain_epochs < 1:
            return f"pretrain_epochs must be >= 1 with pretrain = {s.pretrain!r}, got {s.pretrain_epochs}"
    elif s.pretrain_epochs:
        return "pretrain_epochs is set but pretrain names no public dataset"
    if s.rounds == 0:
        if s.pretrain is None:
            return "rounds must be >= 1 (0 only for a public-only row, which needs pretrain)"
        if s.dp_mode != "none":
            return f"a public-only row (rounds = 0) trains on no private data: dp_mode must be 'none', got {s.dp_mode!r}"
        needs_updates = [a for a in s.attacks if a not in membership_attack_names()]
        if needs_updates:
            return f"a public-only row (rounds = 0) has no client update to attack: drop {', '.join(needs_updates)}"
    for name in ("local_epochs", "batch_size", "num_train_timesteps", "sample_steps"):
        if getattr(s, name) < 1:
            return f"{name} must be >= 1, got {getattr(s, name)}"
    if s.rounds < 0:
        return f"rounds must be >= 1, got {s.rounds}"
    if s.fid_impl not in ("clean", "pytorch-fid"):
        return f"unknown fid_impl {s.fid_impl!r} (clean or pytorch-fid)"
    if s.fid_n_samples < 2:
        return f"fid_n_samples must be >= 2, got {s.fid_n_samples}"
    if s.downstream_n_samples is not None:
        if not s.class_conditional:
            return "downstream_n_samples needs class_conditional = true (only class-conditional samples train a classifier)"
        if s.downstream_n_samples < 2:
            return f"downstream_n_samples must be >= 2, got {s.downstream_n_samples}"
    if s.sample_steps > s.num_train_timesteps:
        return "sample_steps must not exceed num_train_timesteps"
    if s.model not in MODEL_CONFIGS:
        return f"unknown model {s.model!r} (known: {', '.join(MODEL_CONFIGS)})"
    if s.sampler not in SAMPLERS:
        return f"unknown sampler {s.sampler!r} (known: {', '.join(SAMPLERS)})"
    if not 0 < s.heldout_fraction < 1:
        return f"heldout_fraction must be in (0, 1), got {s.heldout_fraction}"
    if s.optimizer not in OPTIMIZERS:
        return f"unknown optimizer {s.optimizer!r} (known: {', '.join(OPTIMIZERS)})"
    if not (s.learning_rate > 0 and math.isfinite(s.learning_rate)):
        return f"learning_rate must be a positive number, got {s.learning_rate}"
    if s.max_train_images is not None and s.max_train_images < s.num_clients:
        return f"max_train_images={s.max_train_images} gives fewer images than num_clients={s.num_clients}"
    if not s.seeds:
        return "seeds must list at least one seed"
    if s.scale not in SCALES:
        return f"unknown scale {s.scale!r} (known: {', '.join(SCALES)})"
    for a in s.attacks:
        if a not in ATTACKS:
            return f"unknown attack {a!r} (known: {', '.join(ATTACKS)})"
    if len(set(s.attacks)) != len(s.attacks):
        return "attacks lists an attack twice"
    if s.canaries < 0:
        return f"canaries must be >= 0, got {s.canaries}"
    if s.canaries and not set(s.attacks) & set(membership_attack_names()):
        return "canaries are only scored by membership attacks: add one (mia-loss, mia-secmi, mia-pia)"
    try:
        dp = get_dp_mode(s.dp_mode)
    except ModeError as e:
        return str(e)
    if not dp.private:
        if s.target_epsilon is not None:
            return f"target_epsilon is set but dp_mode is {s.dp_mode!r}"
        if s.max_grad_norm is not None:
            return f"max_grad_norm is set but dp_mode is {s.dp_mode!r}"
    else:
        if s.target_epsilon is None or not (s.target_epsilon > 0 and math.isfinite(s.target_epsilon)):
            return f"dp_mode {s.dp_mode!r} needs target_epsilon > 0, got {s.target_epsilon}"
        if s.delta is None or not 0 < s.delta < 1:
            return f"dp_mode {s.dp_mode!r} needs delta in (0, 1), got {s.delta}"
        if dp.client_level and s.delta >= 1 / s.num_clients:
            return f"client-level delta={s.delta:g} must be below 1/num_clients = {1 / s.num_clients:g}"
        if dp.client_sampling == "poisson":
            err = _validate_poisson(s)
            if err:
                return err
        elif dp.server_adds_noise and s.min_replies != s.clients_per_round:
            # The noise is calibrated to clients_per_round updates; Flower's DP wrapper
            # aggregates only complete rounds (a missing client fails the round).
            return f"{s.dp_mode} needs min_clients_per_round = clients_per_round (the noise is calibrated to it)"
        if s.max_grad_norm is not None and not (s.max_grad_norm > 0 and math.isfinite(s.max_grad_norm)):
            return f"max_grad_norm must be > 0, got {s.max_grad_norm}"
        if s.accountant not in dp.accountants:
            return f"accountant {s.accountant!r} not available for {s.dp_mode} (known: {', '.join(dp.accountants)})"
        try:
            gsm = get_grad_sample_mode(s.grad_sample_mode)
        except ModeError as e:
            return str(e)
        if s.central_clipping not in ("server", "client"):
            return f"central_clipping must be 'server' or 'client', got {s.central_clipping!r}"
        if s.noise_multiplicity < 1 or (s.noise_multiplicity > 1 and not gsm.supports_noise_multiplicity):
            able = [n for n in grad_sample_mode_names() if get_grad_sample_mode(n).supports_noise_multiplicity]
            return f"noise_multiplicity must be >= 1, and > 1 only with grad_sample_mode {' or '.join(map(repr, able))}"
    if not s.poisson_clients and (s.client_sample_rate is not None or s.adaptive_clipping):
        return f"client_sample_rate and adaptive_clipping need dp_mode 'central-dp-sampled', not {s.dp_mode!r}"
    return None


def _validate_poisson(s: Scenario) -> str | None:
    """central-dp-sampled: a sample rate, its expected count as clients_per_round, server-side clipping."""
    q = s.client_sample_rate
    if q is None or not 0 < q <= 1:
        return f"{s.dp_mode} needs client_sample_rate in (0, 1], got {q}"
    expected = max(1, round(q * s.num_clients))
    if s.clients_per_round != expected:
        return (f"{s.dp_mode}: clients_per_round must be the expected count round(q N) = {expected} "
                f"(q = {q:g}, N = {s.num_clients}), got {s.clients_per_round}")
    if s.min_clients_per_round is not None:
        return f"{s.dp_mode} takes no min_clients_per_round (a round with any number of updates releases)"
    if s.central_clipping != "server":
        return f"{s.dp_mode} clips on the server (central_clipping = 'server'), got {s.central_clipping!r}"
    return None


# Scales ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """How big the same scenarios are on a given machine. Recorded in every leaderboard row."""

    name: str
    model: str            # UNet config for 28 px grayscale data
    model_rgb: str        # UNet config for 32 px RGB data
    rounds: int
    local_epochs: int     # per round; with rounds and clients_per_round / num_clients: epochs over the data
    max_train_images: int | None
    batch_size: int
    sample_steps: int
    fid_n_samples: int
    seeds: tuple[int, ...]


SCALES: dict[str, Scale] = {
    # A 2-core laptop CPU: a tiny UNet, a few hundred images, a couple of rounds (the grid; the
    # privacy suite's own cpu budget is CPU_PRIVACY).
    "cpu": Scale("cpu", "unet-tiny", "unet-tiny", rounds=2, local_epochs=1, max_train_images=256, batch_size=32,
                 sample_steps=10, fid_n_samples=100, seeds=(0,)),
    # One H100/H200: the issue-7 UNets, the whole embedded dataset, paper-like rounds, and a training
    # budget in epochs (issue 16): 20 rounds x half the clients x 10 local epochs = 100 epochs over
    # each party's data (the sampler-cost model needed 40 epochs of unet-tiny for FID 66 at n = 500).
    "gpu": Scale("gpu", "unet-28", "unet-32", rounds=20, local_epochs=10, max_train_images=None, batch_size=64,
                 sample_steps=50, fid_n_samples=2000, seeds=(0, 1, 2)),
}


def get_scale(name: str) -> Scale:
    try:
        return SCALES[name]
    except KeyError:
        raise ScenarioError(f"unknown scale {name!r} (known: {', '.join(SCALES)})") from None


# Suites -----------------------------------------------------------------------------------------
SuiteFn = Callable[[Scale], tuple[Scenario, ...]]
SUITES: dict[str, SuiteFn] = {}


def register_suite(name: str) -> Callable[[SuiteFn], SuiteFn]:
    def deco(fn: SuiteFn) -> SuiteFn:
        if name in SUITES:
            raise ValueError(f"suite {name!r} registered twice")
        SUITES[name] = fn
        return fn

    return deco


def _base(scale: Scale, suite: str, **kw) -> dict:
    return dict(
        suite=suite, scale=scale.name, model=scale.model, rounds=scale.rounds,
        max_train_images=scale.max_train_images, batch_size=scale.batch_size,
        sample_steps=scale.sample_steps, fid_n_samples=scale.fid_n_samples, seeds=scale.seeds,
    ) | kw


@register_suite("smoke")
def smoke_suite(scale: Scale) -> tuple[Scenario, ...]:
    """Two quick federations on the embedded MNIST: IID and Dirichlet-0.5 label skew."""
    common = _base(scale, "smoke", num_clients=4, clients_per_round=2, local_epochs=1, seeds=(0,))
    return (
        Scenario(name="smoke-iid", partition="iid", **common),
        Scenario(name="smoke-dirichlet-0.5", partition="dirichlet-0.5", **common),
    )


# The privacy suite at the cpu scale (issue 16): where a DDPM memorises and where DP's price shows
# within a laptop's budget. Private data: scikit-learn's 8x8 digits, 200 training images over 4
# parties (50 each: a small federation of small sites, the privacy-sensitive regime), every party
# in every round, 20 rounds x 30 local epochs (600 epochs over the data: the no-DP model memorises);
# public pretraining on the embedded MNIST at 8x8 (another population of writers) for 30 epochs.
# Downstream accuracy trains on 2,000 generated digits (200 per class; about 3 s to sample here):
# at the FID's 200 the classifier reads every model 0.2 lower and its spread hides the rows' order.
CPU_PRIVACY = dict(dataset="digits-embedded", pretrain="mnist8-embedded", pretrain_epochs=30, num_clients=4,
                   clients_per_round=4, max_train_images=200, heldout_fraction=0.5, canaries=64, rounds=20,
                   local_epochs=30, batch_size=16,
                   learning_rate=1e-3, sample_steps=20, fid_n_samples=200, downstream_n_samples=2000,
                   grad_sample_mode="mixed-ghost-bk", seeds=(0, 1))
# DP-SGD's own budget: a DP step costs a fixed ~40 ms on top of the plain one (per-sample norms), so
# the DP rows take fewer, larger steps: 20 rounds x 10 local epochs at an expected batch of 32
# (sample rate 0.5 on 50 images: q = 1 / ceil(50 / 32)), a third of the no-DP rows' epochs and a
# sixth of their steps.
CPU_PRIVACY_DP = dict(local_epochs=10, batch_size=32, optimizer="sgd", learning_rate=3e-3)
PRIVACY_EPSILONS = (10.0, 4.0, 1.0)


@register_suite("privacy")
def privacy_suite(scale: Scale) -> tuple[Scenario, ...]:
    """The standard suite: utility against privacy, each row attacked by every attack.

    ``cpu`` (the README's first command): digits at 8x8 with public MNIST pretraining
    (``CPU_PRIVACY``): the public-only reference row, no DP, and local DP-SGD at epsilon 10, 4, 1,
    two seeds each. ``gpu``: the full grid (:func:`privacy_grid_suite`) at a converging budget.
    """
    if scale.name != "cpu":
        return _grid(scale, "privacy", "privacy")
    common = _base(scale, "privacy", delta=1e-5, class_conditional=True, attacks=ATTACKS, **CPU_PRIVACY)
    out = [Scenario(name="privacy-public-only", partition="iid",
                    **(common | dict(rounds=0, attacks=MEMBERSHIP_ATTACKS))),
           Scenario(name="privacy-iid-nodp", partition="iid", **common)]
    for eps in PRIVACY_EPSILONS:
        out.append(Scenario(name=f"privacy-iid-local-eps{eps:g}", partition="iid", dp_mode="local-dpsgd",
                            target_epsilon=eps, **(common | CPU_PRIVACY_DP)))
    return tuple(out)


# Controls for the privacy suite's DP rows (issue 16): what their cost is made of. The same data,
# parties, pretraining and canaries as `privacy`; membership attacks only.
CONTROL_EPSILON = 10.0


@register_suite("privacy-controls")
def privacy_controls_suite(scale: Scale) -> tuple[Scenario, ...]:
    """Where the ``privacy`` suite's DP rows lose against its no-DP row, row by row (``cpu`` only;
    the ``gpu`` privacy grid gives every row one recipe, so it has no controls):

    - ``privacy-control-nodp-dp-recipe``: the DP rows' recipe (plain SGD at 3e-3, 10 local epochs,
      batch 32) with no clipping and no noise: what the recipe itself learns;
    - ``privacy-control-nodp-adam-dp-budget``: the no-DP row's optimizer (Adam at 1e-3) at the DP
      rows' budget, no DP: a recipe that learns the classes within that budget;
    - ``privacy-control-local-eps10-adam``: that recipe under DP-SGD at epsilon 10.
    """
    if scale.name != "cpu":
        return ()
    common = _base(scale, "privacy-controls", delta=1e-5, class_conditional=True, attacks=MEMBERSHIP_ATTACKS,
                   **(CPU_PRIVACY | CPU_PRIVACY_DP))
    adam = dict(optimizer="adam", learning_rate=CPU_PRIVACY["learning_rate"])
    return (
        Scenario(name="privacy-control-nodp-dp-recipe", partition="iid", **common),
        Scenario(name="privacy-control-nodp-adam-dp-budget", partition="iid", **(common | adam)),
        Scenario(name="privacy-control-local-eps10-adam", partition="iid", dp_mode="local-dpsgd",
                 target_epsilon=CONTROL_EPSILON, **(common | adam)),
    )


@register_suite("privacy-grid")
def privacy_grid_suite(scale: Scale) -> tuple[Scenario, ...]:
    """The full grid: no DP, local DP-SGD and central DP at epsilon 1, 4, 10, IID and non-IID, on the
    embedded MNIST, each attacked by every attack (budgets: attacks.base.BUDGETS[scale])."""
    return _grid(scale, "privacy-grid", "grid")


def _grid(scale: Scale, suite: str, prefix: str) -> tuple[Scenario, ...]:
    clients = dict(num_clients=4, clients_per_round=2) if scale.name == "cpu" else \
        dict(num_clients=10, clients_per_round=5)
    # Class-conditional, so every row also has the downstream accuracy DPImageBench ranks by;
    # every attack on every row, so every row has its empirical audit.
    common = _base(scale, suite, local_epochs=scale.local_epochs, delta=1e-5, class_conditional=True,
                   attacks=ATTACKS, **clients)
    out = []
    for partition in ("iid", "dirichlet-0.5"):
        out.append(Scenario(name=f"{prefix}-{partition}-nodp", partition=partition, **common))
        for mode, tag in (("local-dpsgd", "local"), ("central-dp", "central")):
            for eps in (1.0, 4.0, 10.0):
                out.append(Scenario(name=f"{prefix}-{partition}-{tag}-eps{eps:g}", partition=partition,
                                    dp_mode=mode, target_epsilon=eps, **common))
    return tuple(out)


# The cross-device suite at the cpu scale (issue 18): 200 parties of 16 images each (the embedded MNIST
# at 8x8, 3,200 training images, 800 held out), public pretraining on scikit-learn's digits (another
# population of writers), 20 rounds of 5 local epochs of Adam for the 20 parties a round expects.
# The update clip 0.1 (not the mode's default 0.5) was measured on seed 0 at epsilon 10 (FID at
# clip 0.5 / 0.2 / 0.1: sampled 164.9 / 109.9 / 99.2, no amplification 246.5 / - / 129.7; the
# public checkpoint 113.6): the noise is z C / (q N) per weight and round, so a small clip keeps
# the pretrained model and lets the private updates steer it.
CPU_CROSS_DEVICE = dict(dataset="mnist8-embedded", pretrain="digits-embedded", pretrain_epochs=60, rounds=20,
                        local_epochs=5, batch_size=16, learning_rate=1e-3, sample_steps=20, fid_n_samples=200,
                        seeds=(0, 1))
CROSS_DEVICE_CLIP = 0.1


@register_suite("cross-device")
def cross_device_suite(scale: Scale) -> tuple[Scenario, ...]:
    """Hundreds of clients with tens of images each, 20 expected per round: Poisson-sampled central
    DP with amplified accounting (``sampled``) beside the same population with a fixed 20 clients
    per round accounted without amplification (``fixed``, Flower's wrapper), at epsilon 1, 4, 10;
    plus no DP, one adaptive-clipping row and, at ``cpu``, the public-only reference. Only the
    sampled clients train, so a round is cheap. Every row is attacked by the membership attacks.

    ``cpu``: ``CPU_CROSS_DEVICE`` (200 parties of 16 digits at 8x8, public pretraining, 2 seeds).
    ``gpu``: the embedded MNIST at 28 px over 200 clients, 50 rounds (not measured).
    """
    n, q = 200, 0.1
    common = _base(scale, "cross-device", partition="iid", num_clients=n, clients_per_round=round(q * n),
                   local_epochs=1, max_train_images=None, delta=1e-5, class_conditional=True,
                   attacks=MEMBERSHIP_ATTACKS, rounds=50, dataset="mnist-embedded")
    dp = {}
    out = []
    if scale.name == "cpu":
        common |= CPU_CROSS_DEVICE
        dp = dict(max_grad_norm=CROSS_DEVICE_CLIP)
        out.append(Scenario(name="cross-device-public-only", **(common | dict(rounds=0))))
    out.append(Scenario(name="cross-device-iid-nodp", **common))
    for eps in (10.0, 4.0, 1.0):
        out.append(Scenario(name=f"cross-device-iid-sampled-eps{eps:g}", dp_mode="central-dp-sampled",
                            client_sample_rate=q, target_epsilon=eps, **common, **dp))
        out.append(Scenario(name=f"cross-device-iid-fixed-eps{eps:g}", dp_mode="central-dp", target_epsilon=eps,
                            **common, **dp))
    out.append(Scenario(name="cross-device-iid-sampled-adaptive-eps10", dp_mode="central-dp-sampled",
                        client_sample_rate=q, adaptive_clipping=True, target_epsilon=10.0, **common, **dp))
    return tuple(out)


# The grid scenarios (privacy-grid) the CI gate re-runs on every change (scripts/regression.sh): no DP
# and epsilon 4 of both DP modes on IID data, and local DP-SGD under label skew.
REGRESSION_SCENARIOS = ("iid-nodp", "iid-local-eps4", "iid-central-eps4", "dirichlet-0.5-local-eps4")


@register_suite("regression")
def regression_suite(scale: Scale) -> tuple[Scenario, ...]:
    """A subset of `privacy-grid` for the regression gate (scripts/regression.sh, bench compare).

    ``gpu``: four privacy scenarios at GPU scale with 10 instead of 20 rounds and two seeds (the
    seeds' spread sets the tolerance band of `bench compare`), sized for one H100 in under
    30 minutes (an estimate from the H200 step timings; not yet measured). ``cpu``: the first two
    on 64 images, one round, 16 FID samples and one seed, so that the CPU path of the gate script
    (tests/test_regression_script.py) runs in minutes; CPU Inception dominates its time.
    """
    grid = {s.name: s for s in privacy_grid_suite(scale)}
    if scale.name == "cpu":
        names, sizes = REGRESSION_SCENARIOS[:2], dict(rounds=1, max_train_images=64, fid_n_samples=16,
                                                        sample_steps=5, seeds=(0,))
    else:
        names, sizes = REGRESSION_SCENARIOS, dict(rounds=10, seeds=(0, 1))
    return tuple(dataclasses.replace(grid[f"grid-{n}"], name=f"regression-{n}", suite="regression",
                                     **sizes) for n in names)


@register_suite("seed-paper")
def seed_paper_suite(scale: Scale) -> tuple[Scenario, ...]:
    """The grid of Tun et al. 2023: beta x N clients x E local epochs, 10 clients per round.

    Datasets as in the paper (its CT set is replaced by MedMNIST's pneumonia X-rays, the
    privacy-sensitive medical case we can load from local files).
    """
    out = []
    datasets = {"fashion-mnist": scale.model, "cifar10": scale.model_rgb, "svhn": scale.model_rgb,
                "medmnist:pneumoniamnist": scale.model}
    for dataset, model in datasets.items():
        for beta in ("0.1", "0.5", "5"):
            for n in (10, 30, 50):
                for e in (1, 5, 10):
                    name = f"paper-{dataset.replace(':', '-')}-dir{beta}-n{n}-e{e}"
                    out.append(Scenario(**_base(
                        scale, "seed-paper", name=name, dataset=dataset, partition=f"dirichlet-{beta}",
                        num_clients=n, clients_per_round=10, local_epochs=e, model=model,
                        max_train_images=None if scale.name == "gpu" else max(scale.max_train_images, 10 * n),
                    )))
    return tuple(out)


@register_suite("seed-paper-embedded")
def seed_paper_embedded_suite(scale: Scale) -> tuple[Scenario, ...]:
    """The seed paper's question on data every machine has (issue 16): does FID grow with the number
    of clients N and with label skew? Dirichlet beta 0.1 / 0.5 / 5 x N = 10 / 30 / 50, 10 clients per
    round, fixed local epochs, no DP, as in Tun et al. 2023 (Fashion-MNIST, N = 10 / 30 / 50: FID
    17.03 / 19.56 / 35.61). ``cpu``: the 8x8 digits (all 1,437 training images: 144 down to 29 per
    client) with the privacy suite's model, optimizer and public pretraining, 20 rounds x 5 local
    epochs, one seed. ``gpu``: the embedded MNIST with unet-28 at the gpu scale's budget."""
    out = []
    if scale.name == "cpu":
        common = _base(scale, "seed-paper-embedded", dataset="digits-embedded", pretrain="mnist8-embedded",
                       pretrain_epochs=CPU_PRIVACY["pretrain_epochs"], class_conditional=True, clients_per_round=10,
                       rounds=20, local_epochs=5, batch_size=16, learning_rate=1e-3, max_train_images=None,
                       sample_steps=20, fid_n_samples=200, seeds=(0,))
    else:
        common = _base(scale, "seed-paper-embedded", dataset="mnist-embedded", class_conditional=True,
                       clients_per_round=10, local_epochs=scale.local_epochs)
    for beta in ("0.1", "0.5", "5"):
        for n in (10, 30, 50):
            out.append(Scenario(name=f"paper-embedded-dir{beta}-n{n}", partition=f"dirichlet-{beta}",
                                num_clients=n, **common))
    return tuple(out)


def suite_names() -> list[str]:
    return sorted(SUITES)


def get_suite(name: str, scale: str = "cpu") -> tuple[Scenario, ...]:
    try:
        fn = SUITES[name]
    except KeyError:
        raise ScenarioError(f"unknown suite {name!r} (known: {', '.join(suite_names())})") from None
    return fn(get_scale(scale))


def all_scenarios(scale: str = "cpu") -> dict[str, Scenario]:
    out: dict[str, Scenario] = {}
    for name in suite_names():
        for s in get_suite(name, scale):
            out.setdefault(s.name, s)
    return out


def get_scenario(name: str, scale: str = "cpu") -> Scenario:
    scenarios = all_scenarios(scale)
    try:
        return scenarios[name]
    except KeyError:
        raise ScenarioError(
            f"unknown scenario {name!r} (see `bench list`; {len(scenarios)} registered)"
        ) from None


def load_scenario_file(path: str | Path) -> tuple[Scenario, ...]:
    """Scenarios from a TOML file: either one scenario as top-level keys, or ``[[scenario]]`` tables.

    Field names are those of :class:`Scenario`; unknown or ill-typed fields are refused by name.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"scenario file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"scenario file {p}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"scenario file {p}: invalid TOML ({e})") from None
    tables = data["scenario"] if "scenario" in data and isinstance(data["scenario"], list) else [data]
    if not tables:
        raise ScenarioError(f"scenario file {p}: no scenarios")
    out = [Scenario.from_dict(t, source=f"scenario file {p}") for t in tables]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ScenarioError(f"scenario file {p}: duplicate scenario names")
    return tuple(out)
