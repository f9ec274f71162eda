"""The one list of attacks: each declared once, by name, with its threat model and reference.

A declaration is the case apart from the attack (breaching): the threat model says what the
adversary observes, and the referee (``attacks.evaluate``) builds that observation; the
implementation is one function ``run(observation, budget, generator) -> AttackResult`` in the
attack's own module, imported only when the attack runs. So this list is read without torch:
``benchmark.suites.ATTACKS`` comes from it, in declaration order (the privacy suite attacks with
all of them, and the order is part of a scenario's hash).

A new attack is its module and one declaration here; a test registers one with :func:`registered`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attacks.base import CURIOUS_SERVER_THREAT, FINAL_MODEL, MEMBERSHIP_THREAT, AttackError, ThreatModel

if TYPE_CHECKING:
    import torch

    from attacks.base import Attack, AttackBudget, AttackResult

# attacks.json's own sections; a client-update attack's record is stored under its name next to them.
RESERVED = ("mia", "canaries", "audit", "budget")
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclass(frozen=True)
class AttackDeclaration:
    """A registered attack (``attacks.base.Attack``): its implementation is called on ``run``."""

    name: str
    threat_model: ThreatModel
    reference: str
    implementation: Callable[[Any, AttackBudget, torch.Generator], AttackResult]

    def run(self, observation: Any, budget: AttackBudget, generator: torch.Generator) -> AttackResult:
        return self.implementation(observation, budget, generator)


REGISTRY: dict[str, Attack] = {}


def register(attack: Attack) -> Attack:
    """Add an attack; a name is taken once, and must work as a file key (``mia-loss`` -> ``mia_loss_scores``)."""
    name = attack.name
    if name in REGISTRY:
        raise AttackError(f"attack {name!r} registered twice")
    if not _NAME.fullmatch(name) or name in RESERVED or name.endswith("-canary"):
        raise AttackError(f"attack name {name!r} must be lowercase words joined by '-', not ending in "
                          f"'-canary', not one of {', '.join(RESERVED)}")
    if not isinstance(attack.threat_model, ThreatModel):
        raise AttackError(f"attack {name!r}: threat_model must be an attacks.base.ThreatModel")
    REGISTRY[name] = attack
    return attack


@contextmanager
def registered(*attacks: Attack) -> Iterator[None]:
    """Register ``attacks`` for the duration of a block (tests), then remove them again."""
    done = []
    try:
        for a in attacks:
            done.append(register(a).name)
        yield
    finally:
        for name in done:
            REGISTRY.pop(name, None)


def declare(name: str, threat_model: ThreatModel, *, reference: str):
    """Decorator: register ``fn(observation, budget, generator) -> AttackResult`` as attack ``name``."""

    def deco(fn):
        register(AttackDeclaration(name, threat_model, reference, fn))
        return fn

    return deco


def get_attack(name: str) -> Attack:
    try:
        return REGISTRY[name]
    except KeyError:
        raise AttackError(f"unknown attack {name!r} (known: {', '.join(REGISTRY)})") from None


def attack_names() -> tuple[str, ...]:
    """Every registered attack, in declaration order."""
    return tuple(REGISTRY)


def membership_attack_names() -> tuple[str, ...]:
    """The attacks that score candidates against the final model (the ones canaries are for)."""
    return tuple(n for n, a in REGISTRY.items() if a.threat_model.observes == FINAL_MODEL)


# The attacks. Each implementation is imported when it runs (torch); its docstring states the threat model.
@declare("mia-loss", MEMBERSHIP_THREAT, reference="Carlini et al. 2023 (USENIX Sec.); Matsumoto et al. 2023 (SPW)")
def _mia_loss(observation, budget, generator):
    from attacks import mia_loss

    return mia_loss.run(observation, budget, generator)


@declare("mia-secmi", MEMBERSHIP_THREAT, reference="Duan et al. 2023 (ICML), SecMI-stat")
def _mia_secmi(observation, budget, generator):
    from attacks import mia_secmi

    return mia_secmi.run(observation, budget, generator)


@declare("mia-pia", MEMBERSHIP_THREAT, reference="Kong et al. 2024 (ICLR), PIA")
def _mia_pia(observation, budget, generator):
    from attacks import mia_pia

    return mia_pia.run(observation, budget, generator)


@declare("inversion", CURIOUS_SERVER_THREAT,
         reference="Geiping et al. 2020 (NeurIPS); Huang et al. 2024, GIDM / GIDM+")
def _inversion(observation, budget, generator):
    from attacks import inversion

    return inversion.run(observation, budget, generator)
