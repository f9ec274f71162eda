"""The scenario: a frozen description of one federated experiment, its identity and its files.

A :class:`Scenario` names one experiment (dataset, partition, federation, model, privacy settings,
evaluation budget) and carries its scale's name. Its hash covers every field that changes what a
run computes, so runs of different definitions (or sizes) never mix in a leaderboard. Seeds are
not part of a scenario's identity: a run is ``(scenario, seed)``. Scenarios come from the suites
(:mod:`benchmark.suites`, sized by :mod:`benchmark.scales`), from JSON (a run folder) or from TOML
files (:func:`load_scenario_file`).

Construction is light (validation only, :mod:`benchmark.scenario_rules`); all heavy work happens
in :mod:`benchmark.runner`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmark.scenario_rules import scenario_problem, type_problem
from privacy.mechanisms import get_mechanism  # torch-free


# Fields added after results were published: at these values a scenario's hash is the one it was
# published under.
HASH_NEUTRAL_DEFAULTS = {"min_clients_per_round": None, "round_timeout_s": None, "canaries": 0,
                         "gradient_canaries": 0, "client_canaries": 0, "plant": None,
                         # Poisson client sampling
                         "client_sample_rate": None, "adaptive_clipping": False,
                         # public pretraining (benchmark.pretrain)
                         "pretrain": None, "pretrain_epochs": 0, "optimizer": "adam",
                         # the downstream classifier's own, larger sample
                         "downstream_n_samples": None,
                         # your own images (benchmark.folder_data)
                         "image_size": None, "channels": None}


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
    dp_mode: str = "none"                   # a DP mechanism of privacy.mechanisms
    target_epsilon: float | None = None
    delta: float | None = None
    max_grad_norm: float | None = None      # per-sample clip (local) / per-update clip (central)
    accountant: str = "rdp"                 # local: rdp or prv (Opacus); central: rdp (Flower's)
    grad_sample_mode: str = "hooks"         # local DP-SGD (privacy.modes): hooks, ghost, mixed-ghost, ...
    noise_multiplicity: int = 1             # local DP-SGD: noise draws per image (DPDM)
    central_clipping: str = "server"        # central DP: Flower's server- or client-side clipping
    attacks: tuple[str, ...] = ()
    canaries: int = 0                       # audit: m outliers, each put in client 0 by a fair coin
    gradient_canaries: int = 0              # white-box audit of local DP-SGD: m Dirac gradient canaries
    client_canaries: int = 0                # white-box audit of central DP: m canary clients (privacy.canary_clients)
    plant: str | None = None                # auditing the audit: a planted defect (privacy/plants.py)
    max_train_images: int | None = None
    heldout_fraction: float = 0.2
    batch_size: int = 32
    learning_rate: float = 2e-4
    optimizer: str = "adam"                 # the clients' optimizer (benchmark.optimizers)
    num_train_timesteps: int = 1000
    sampler: str = "ddim"                   # the evaluation sampler (benchmark.samplers)
    sample_steps: int = 20
    fid_n_samples: int = 200
    fid_impl: str = "clean"                 # a name in benchmark.fid_extractors
    # Class-balanced generated images the downstream classifier trains on (class-conditional
    # scenarios); None: the fid_n_samples FID samples. FID always scores the first fid_n_samples.
    downstream_n_samples: int | None = None
    seeds: tuple[int, ...] = (0,)
    suite: str = "custom"
    scale: str = "cpu"
    # Faulty clients (see benchmark/federation/screening.py). None: every sampled client must
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
    # folder:PATH datasets (benchmark.folder_data): the square size and channel count (1 or 3) the
    # images are brought to; None: the images' own, which must then agree.
    image_size: int | None = None
    channels: int | None = None

    @property
    def min_replies(self) -> int:
        """Valid updates a round needs; fewer and the round (and the run) fails (the mechanism's
        rule: ``min_clients_per_round``, by default every sampled client)."""
        return get_mechanism(self.dp_mode).min_replies(self)

    def __post_init__(self) -> None:
        err = type_problem(self) or scenario_problem(self)
        if err:
            raise ScenarioError(f"scenario {self.name!r}: {err}")

    # Identity -----------------------------------------------------------------------------
    def definition(self) -> dict:
        """Every field that changes what a run computes (not the seeds, not the suite).

        Fields added after results were published (``HASH_NEUTRAL_DEFAULTS``) enter the
        definition only when set to something else than their default, so the hashes of
        existing scenarios, and the run folders and leaderboards named by them, stay valid.
        A scenario with attacks also carries its scale's attack budget (``Scale.attack_budget``).
        """
        d = dataclasses.asdict(self)
        d.pop("seeds")
        d.pop("suite")
        for key, default in HASH_NEUTRAL_DEFAULTS.items():
            if d[key] == default:
                d.pop(key)
        if self.attacks:
            # The attack budget comes with the scale; a changed budget is a different experiment.
            from attacks.base import scale_budget

            d["attack_budget"] = scale_budget(self.scale).to_dict()
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
