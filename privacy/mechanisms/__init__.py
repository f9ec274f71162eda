"""The DP mechanisms, one object per ``dp_mode``, found by name here (torch- and Flower-free).

``none``                :class:`privacy.mechanisms.base.Mechanism` (no DP)
``local-dpsgd``         :mod:`privacy.mechanisms.local_dpsgd` (DP-SGD on every client, Opacus)
``central-dp``          :mod:`privacy.mechanisms.central` (Flower's fixed-clipping wrapper)
``central-dp-sampled``  :mod:`privacy.mechanisms.central` (Poisson-sampled DP-FedAvg)
``central-dp-ftrl``     :mod:`privacy.mechanisms.central_ftrl` (DP-FTRL, tree-aggregated noise)

A new mechanism is its module (a :class:`~privacy.mechanisms.base.DPMechanism` subclass: see the
contract in :mod:`privacy.mechanisms.base`) and one ``register_mechanism`` line below. A mechanism
kept out of the tree registers itself from a module named in ``$FEDDP_PLUGINS`` (comma-separated
module names, imported at the registry's first lookup, as pytest reads ``$PYTEST_PLUGINS``): every
process that reads a scenario looks a mechanism up, Flower's Ray workers and SuperNodes included,
and they inherit the environment. A plugin that cannot be imported is a one-line
:class:`~privacy.modes.ModeError` at that lookup.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator

from privacy.mechanisms.base import Canaries, Mechanism, as_canaries  # noqa: F401 (re-exported)
from privacy.mechanisms.central import CentralDP, CentralDPSampled
from privacy.mechanisms.central_ftrl import CentralDPFTRL
from privacy.mechanisms.local_dpsgd import LocalDPSGD
from privacy.modes import ModeError, _Registry

_MECHANISMS = _Registry("dp_mode")


def register_mechanism(mechanism: Mechanism) -> Mechanism:
    return _MECHANISMS.register(mechanism)


def get_mechanism(name: str) -> Mechanism:
    _load_plugins()
    return _MECHANISMS.get_entry(name)


def mechanism_names(*, plugins: bool = True) -> tuple[str, ...]:
    """Every registered mechanism; ``plugins=False``: the built-in ones only (what the docs list,
    whatever the environment)."""
    if not plugins:
        return BUILT_IN
    _load_plugins()
    return tuple(_MECHANISMS)


@contextlib.contextmanager
def registered(mechanism: Mechanism) -> Iterator[Mechanism]:
    """``mechanism`` is registered inside the block and removed after it (tests)."""
    with _MECHANISMS.holding(mechanism):
        yield mechanism


def mechanism_fields() -> dict[str, tuple[str, ...]]:
    """Scenario field -> the mechanisms that read it, for the fields only some read."""
    _load_plugins()
    out: dict[str, tuple[str, ...]] = {}
    for m in _MECHANISMS.values():
        for field in m.own_fields:
            out[field] = out.get(field, ()) + (m.name,)
    return out


NO_DP = register_mechanism(Mechanism())
LOCAL_DPSGD = register_mechanism(LocalDPSGD())
CENTRAL_DP = register_mechanism(CentralDP())
CENTRAL_DP_SAMPLED = register_mechanism(CentralDPSampled())
CENTRAL_DP_FTRL = register_mechanism(CentralDPFTRL())
BUILT_IN = tuple(_MECHANISMS)


_loaded: set[str] = set()


def _load_plugins() -> None:
    for name in filter(None, (n.strip() for n in os.environ.get("FEDDP_PLUGINS", "").split(","))):
        if name in _loaded:
            continue
        _loaded.add(name)  # first: a plugin registers through this module's functions
        try:
            importlib.import_module(name)
        except ImportError as e:
            _loaded.discard(name)
            raise ModeError(f"FEDDP_PLUGINS names {name!r}, which cannot be imported ({e})") from None
