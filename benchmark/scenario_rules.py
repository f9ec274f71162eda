"""What makes a scenario valid: its fields' types and the rules between them.

Pure functions of a scenario's attributes, each returning the first problem as one line (or
None); :class:`benchmark.scenarios.Scenario` calls them on construction and raises. Every name a
field may take is read from its registry (datasets, partitions, models, samplers, optimizers, FID
extractors, attacks, scales, DP mechanisms), so a new entry there needs no edit here. This
module does not import :mod:`benchmark.scenarios` (the dataclass imports it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing

from attacks.registry import attack_names, membership_attack_names
from benchmark.fid_extractors import extractor_names  # torch-free
from benchmark.model_configs import MODEL_CONFIGS, is_config_path
from benchmark.optimizers import UnknownOptimizerError, get_optimizer  # torch-free
from benchmark.partition import PartitionError, parse_scheme
from benchmark.samplers import UnknownSamplerError, get_sampler  # torch-free
from benchmark.scales import SCALES
from privacy.mechanisms import get_mechanism  # torch-free
from privacy.modes import ModeError


# Type checking of fields (TOML and JSON give us plain values) -------------------------------
@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def type_problem(s) -> str | None:
    """The first field of dataclass instance ``s`` whose value does not fit its annotation."""
    hints = _hints(type(s))
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if not _is_instance(value, hints[f.name]):
            return f"field {f.name!r} must be {_type_name(hints[f.name])}, got {type(value).__name__} {value!r}"
    return None


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


# The rules between fields -----------------------------------------------------------------------
def scenario_problem(s) -> str | None:
    """The first problem of scenario ``s`` (well-typed), as one line, or None."""
    from benchmark.data import dataset_names, is_folder, is_known

    if not s.name or any(c in s.name for c in "/\\ \t\n"):
        return "name must be non-empty without slashes or spaces"
    try:
        mechanism = get_mechanism(s.dp_mode)
    except ModeError as e:
        return str(e)
    if not is_known(s.dataset):
        return f"unknown dataset {s.dataset!r} (known: {', '.join(dataset_names())}, medmnist:<name>, folder:PATH)"
    if (s.image_size is not None or s.channels is not None) and not is_folder(s.dataset):
        return f"image_size and channels apply to folder: datasets only, not {s.dataset!r}"
    if s.image_size is not None and s.image_size < 4:
        return f"image_size must be >= 4, got {s.image_size}"
    if s.channels not in (None, 1, 3):
        return f"channels must be 1 or 3, got {s.channels}"
    try:
        parse_scheme(s.partition)
    except PartitionError as e:
        return str(e)
    if parse_scheme(s.partition)[0] == "by-site" and not is_folder(s.dataset):
        return f"partition 'by-site' needs a folder:PATH dataset with PATH/<site>/<class>/<image>, not {s.dataset!r}"
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
        if mechanism.private:
            return f"a public-only row (rounds = 0) trains on no private data: dp_mode must be 'none', got {s.dp_mode!r}"
        needs_updates = [a for a in s.attacks if a not in membership_attack_names()]
        if needs_updates:
            return f"a public-only row (rounds = 0) has no client update to attack: drop {', '.join(needs_updates)}"
    for name in ("local_epochs", "batch_size", "num_train_timesteps", "sample_steps"):
        if getattr(s, name) < 1:
            return f"{name} must be >= 1, got {getattr(s, name)}"
    if s.rounds < 0:
        return f"rounds must be >= 1, got {s.rounds}"
    if s.fid_impl not in extractor_names():
        return f"unknown fid_impl {s.fid_impl!r} ({' or '.join(extractor_names())})"
    if s.fid_n_samples < 2:
        return f"fid_n_samples must be >= 2, got {s.fid_n_samples}"
    if s.downstream_n_samples is not None:
        if not s.class_conditional:
            return "downstream_n_samples needs class_conditional = true (only class-conditional samples train a classifier)"
        if s.downstream_n_samples < 2:
            return f"downstream_n_samples must be >= 2, got {s.downstream_n_samples}"
    if s.sample_steps > s.num_train_timesteps:
        return "sample_steps must not exceed num_train_timesteps"
    if s.model not in MODEL_CONFIGS and not is_config_path(s.model):
        return f"unknown model {s.model!r} (known: {', '.join(MODEL_CONFIGS)}, config:PATH)"
    try:
        get_sampler(s.sampler)
    except UnknownSamplerError as e:
        return str(e)
    if not 0 < s.heldout_fraction < 1:
        return f"heldout_fraction must be in (0, 1), got {s.heldout_fraction}"
    try:
        get_optimizer(s.optimizer)
    except UnknownOptimizerError as e:
        return str(e)
    if not (s.learning_rate > 0 and math.isfinite(s.learning_rate)):
        return f"learning_rate must be a positive number, got {s.learning_rate}"
    if s.max_train_images is not None and s.max_train_images < s.num_clients:
        return f"max_train_images={s.max_train_images} gives fewer images than num_clients={s.num_clients}"
    if not s.seeds:
        return "seeds must list at least one seed"
    if s.scale not in SCALES:
        return f"unknown scale {s.scale!r} (known: {', '.join(SCALES)})"
    attacks = attack_names()
    for a in s.attacks:
        if a not in attacks:
            return f"unknown attack {a!r} (known: {', '.join(attacks)})"
    if len(set(s.attacks)) != len(s.attacks):
        return "attacks lists an attack twice"
    if s.canaries < 0:
        return f"canaries must be >= 0, got {s.canaries}"
    if s.canaries and not set(s.attacks) & set(membership_attack_names()):
        return "canaries are only scored by membership attacks: add one (mia-loss, mia-secmi, mia-pia)"
    return mechanism.validate(s)
