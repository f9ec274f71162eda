"""Suites: named tuples of scenarios, each a function of a :class:`~benchmark.scales.Scale`.

The registry (:func:`register_suite`, :func:`get_suite`, :func:`get_scenario`) refuses
duplicates and unknown names in one line; the catalogue below declares every suite. The same suite
at every scale has the same scenario names but different sizes (and so different scenario hashes).
A suite reads what differs between scales from the scale's fields and only records its name, so
a new scale is one entry of :data:`benchmark.scales.SCALES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from attacks.registry import attack_names, membership_attack_names
from benchmark.scales import SCALES, Scale
from benchmark.scenarios import Scenario, ScenarioError

# Every attack, in declaration order (the order is part of a scenario's hash); torch-free.
ATTACKS = attack_names()
MEMBERSHIP_ATTACKS = tuple(a for a in ATTACKS if a in membership_attack_names())  # no client update needed

# The registry -----------------------------------------------------------------------------------
SuiteFn = Callable[[Scale], tuple[Scenario, ...]]
SUITES: dict[str, SuiteFn] = {}


def register_suite(name: str) -> Callable[[SuiteFn], SuiteFn]:
    def deco(fn: SuiteFn) -> SuiteFn:
        if name in SUITES:
            raise ValueError(f"suite {name!r} registered twice")
        SUITES[name] = fn
        return fn

    return deco


def get_scale(name: str) -> Scale:
    try:
        return SCALES[name]
    except KeyError:
        raise ScenarioError(f"unknown scale {name!r} (known: {', '.join(SCALES)})") from None


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


# The catalogue ----------------------------------------------------------------------------------
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


PRIVACY_EPSILONS = (10.0, 4.0, 1.0)
# White-box gradient canaries in every local DP-SGD row of the standard suites (privacy/whitebox.py):
# with every guess right the f-DP one-run bound reaches about 10.5 at m = 10,000 (attacks/fdp.py);
# the canaries cost a 10,000-float block per step and change nothing the model computes.
GRADIENT_CANARIES = 10_000
# The canary clients of a central DP row (privacy.canary_clients): 10,000 lift the client-level
# audit's ceiling to about 13.8 (f-DP bound, 20 releases), above every claim up to 10.
CLIENT_CANARIES = 10_000


@register_suite("privacy")
def privacy_suite(scale: Scale) -> tuple[Scenario, ...]:
    """The standard suite: utility against privacy, each row attacked by every attack.

    With a scale's own privacy recipe (``cpu``: digits at 8x8 with public MNIST pretraining,
    ``benchmark.scales.CPU_PRIVACY``): the public-only reference row, no DP, and local DP-SGD at
    epsilon 10, 4, 1. Without one (``gpu``): the full grid (:func:`privacy_grid_suite`) at the
    scale's converging budget.
    """
    recipe = scale.privacy
    if recipe is None:
        return _grid(scale, "privacy", "privacy")
    common = _base(scale, "privacy", delta=1e-5, class_conditional=True, attacks=ATTACKS, **recipe.common)
    out = [Scenario(name="privacy-public-only", partition="iid",
                    **(common | dict(rounds=0, attacks=MEMBERSHIP_ATTACKS))),
           Scenario(name="privacy-iid-nodp", partition="iid", **common)]
    for eps in PRIVACY_EPSILONS:
        out.append(Scenario(name=f"privacy-iid-local-eps{eps:g}", partition="iid", dp_mode="local-dpsgd",
                            target_epsilon=eps, gradient_canaries=GRADIENT_CANARIES, **(common | recipe.dp)))
    return tuple(out)


# Auditing the audit: one party's local DP-SGD (40 digits at 8x8, batch 10: rate 1/4, 5 rounds x 20
# epochs = 400 steps) with the standard suites' white-box canaries, at epsilon 4 and 1, each as
# claimed and with every planted defect of privacy/plants.py. Measured on the exact mechanism
# (tests/test_fdp_audit.py's simulation, m = 10,000): noise off, clip off and rate x4 stand far
# above the claim; noise x0.4 at epsilon 1 is the hardest (bounds 1.02-1.16 against 1 in five draws).
AUDIT_POWER = dict(dataset="digits-embedded", model="unet-tiny", num_clients=1, clients_per_round=1,
                   max_train_images=40, heldout_fraction=0.5, rounds=5, local_epochs=20, batch_size=10,
                   optimizer="sgd", learning_rate=3e-3, sample_steps=5, fid_n_samples=16, attacks=("mia-loss",),
                   gradient_canaries=GRADIENT_CANARIES, delta=1e-5, seeds=(0,), grad_sample_mode="mixed-ghost-bk")
AUDIT_POWER_EPSILONS = (4.0, 1.0)
# The same for a central row: Poisson-sampled DP-FedAvg (12 parties of 2 digits, q = 1/4 as for the
# local rows, so that rate-x4 is a sampler at 4 times its rate: every party every round; 20 rounds
# of one local step each) with 10,000 canary clients (privacy/canary_clients.py) at epsilon 4
# (client level), as claimed and with every planted defect. The canaries test the server's sampler,
# clip and noise, so the parties' training is kept as small as a federation can be. At q = 1/2 the
# rate plant was only a doubling (capped at 1; the planted mechanism's epsilon 8.1) and one run
# missed it (bound 3.86 against 4, 2026-12-07).
AUDIT_POWER_CENTRAL = dict(dataset="digits-embedded", model="unet-tiny", num_clients=12, clients_per_round=3,
                           client_sample_rate=0.25, max_train_images=48, heldout_fraction=0.5, rounds=20,
                           local_epochs=1, batch_size=4, optimizer="sgd", learning_rate=3e-3, sample_steps=5,
                           fid_n_samples=16, attacks=("mia-loss",), client_canaries=CLIENT_CANARIES, delta=1e-5, seeds=(0,))
AUDIT_POWER_CENTRAL_EPSILONS = (4.0,)
# And for DP-FTRL (central-dp-ftrl): 20 parties of 2 digits dealt 2 a round, so a tree epoch is 10
# rounds and 20 rounds are two epochs (8 Gaussian nodes per canary client: the shape
# tests/test_central_dp_ftrl.py checks the plants against on the bare strategy), with the same
# canary clients at epsilon 4, as claimed and with each plant but the sampler's (the mechanism
# samples nobody: a rate plant is refused).
AUDIT_POWER_FTRL = {k: v for k, v in AUDIT_POWER_CENTRAL.items() if k != "client_sample_rate"} | dict(
    num_clients=20, clients_per_round=2, max_train_images=80)


@register_suite("audit-power")
def audit_power_suite(scale: Scale) -> tuple[Scenario, ...]:
    """Rows that must fail the audit beside rows that must pass it (the same recipes at every scale):
    local DP-SGD at epsilon 4 and 1 (``AUDIT_POWER``), Poisson-sampled central DP at epsilon 4
    (``AUDIT_POWER_CENTRAL``, client level, audited by canary clients) and DP-FTRL at epsilon 4
    (``AUDIT_POWER_FTRL``, the same canary clients), each as claimed and with each planted defect
    (``plant``: noise off, noise at 0.4 times, clipping off, the sampler at 4 times the accounted
    rate; DP-FTRL has no sampler to plant). A planted row claims nothing as a result; ``bench run --suite
    audit-power`` exits 3 when the audit catches a plant, and the report lists which it caught."""
    from privacy.mechanisms import get_mechanism

    out = []
    for mode, tag, recipe, epsilons in (("local-dpsgd", "", AUDIT_POWER, AUDIT_POWER_EPSILONS),
                                        ("central-dp-sampled", "central-", AUDIT_POWER_CENTRAL,
                                         AUDIT_POWER_CENTRAL_EPSILONS),
                                        ("central-dp-ftrl", "ftrl-", AUDIT_POWER_FTRL, AUDIT_POWER_CENTRAL_EPSILONS)):
        common = dict(suite="audit-power", scale=scale.name, dp_mode=mode) | recipe
        plants = get_mechanism(mode).plants()   # DP-FTRL samples nobody: no rate plant
        for eps in epsilons:
            out.append(Scenario(name=f"audit-power-{tag}eps{eps:g}", target_epsilon=eps, **common))
            out += [Scenario(name=f"audit-power-{tag}eps{eps:g}-{plant}", target_epsilon=eps, plant=plant, **common)
                    for plant in plants]
    return tuple(out)


# Controls for the privacy suite's DP rows: what their cost is made of. The same data,
# parties, pretraining and canaries as `privacy` (the DP row with its white-box gradient canaries
# too); membership attacks only.
CONTROL_EPSILON = 10.0


@register_suite("privacy-controls")
def privacy_controls_suite(scale: Scale) -> tuple[Scenario, ...]:
    """Where the ``privacy`` suite's DP rows lose against its no-DP row, row by row (at a scale with
    its own privacy recipe, ``cpu``; the ``gpu`` privacy grid gives every row one recipe, so it has
    no controls):

    - ``privacy-control-nodp-dp-recipe``: the DP rows' recipe (plain SGD at 3e-3, 10 local epochs,
      batch 32) with no clipping and no noise: what the recipe itself learns;
    - ``privacy-control-nodp-adam-dp-budget``: the no-DP row's optimizer (Adam at 1e-3) at the DP
      rows' budget, no DP: a recipe that learns the classes within that budget;
    - ``privacy-control-local-eps10-adam``: that recipe under DP-SGD at epsilon 10.
    """
    recipe = scale.privacy
    if recipe is None:
        return ()
    common = _base(scale, "privacy-controls", delta=1e-5, class_conditional=True, attacks=MEMBERSHIP_ATTACKS,
                   **(recipe.common | recipe.dp))
    adam = dict(optimizer="adam", learning_rate=recipe.common["learning_rate"])
    return (
        Scenario(name="privacy-control-nodp-dp-recipe", partition="iid", **common),
        Scenario(name="privacy-control-nodp-adam-dp-budget", partition="iid", **(common | adam)),
        Scenario(name="privacy-control-local-eps10-adam", partition="iid", dp_mode="local-dpsgd",
                 target_epsilon=CONTROL_EPSILON, gradient_canaries=GRADIENT_CANARIES, **(common | adam)),
    )


@register_suite("privacy-grid")
def privacy_grid_suite(scale: Scale) -> tuple[Scenario, ...]:
    """The full grid: no DP, local DP-SGD and central DP at epsilon 1, 4, 10, IID and non-IID, on the
    embedded MNIST, each attacked by every attack (budgets: Scale.attack_budget)."""
    return _grid(scale, "privacy-grid", "grid")


def _grid(scale: Scale, suite: str, prefix: str) -> tuple[Scenario, ...]:
    # Class-conditional, so every row also has the downstream accuracy DPImageBench ranks by;
    # every attack on every row, so every row has its empirical audit.
    common = _base(scale, suite, local_epochs=scale.local_epochs, delta=1e-5, class_conditional=True,
                   attacks=ATTACKS, num_clients=scale.grid_num_clients,
                   clients_per_round=scale.grid_clients_per_round)
    out = []
    for partition in ("iid", "dirichlet-0.5"):
        out.append(Scenario(name=f"{prefix}-{partition}-nodp", partition=partition, **common))
        for mode, tag, audit in (("local-dpsgd", "local", dict(gradient_canaries=GRADIENT_CANARIES)),
                                 ("central-dp", "central", {})):
            for eps in (1.0, 4.0, 10.0):
                out.append(Scenario(name=f"{prefix}-{partition}-{tag}-eps{eps:g}", partition=partition,
                                    dp_mode=mode, target_epsilon=eps, **common, **audit))
    return tuple(out)


@register_suite("cross-device")
def cross_device_suite(scale: Scale) -> tuple[Scenario, ...]:
    """Hundreds of clients with tens of images each, 20 expected per round: Poisson-sampled central
    DP with amplified accounting (``sampled``) beside the same population with a fixed 20 clients
    per round accounted without amplification (``fixed``, Flower's wrapper) and DP-FTRL (``ftrl``:
    the 200 clients dealt 20 per round, each once per tree epoch of 10 rounds, tree-aggregated noise,
    no sampling assumption), at epsilon 1, 4, 10; plus no DP, one adaptive-clipping row and, where
    the scale's recipe pretrains, the public-only reference. Only the sampled clients train, so a round is cheap. Every row is attacked by the
    membership attacks; every DP row carries ``CLIENT_CANARIES`` canary clients, so its client-level
    claim is audited white-box (privacy.canary_clients).

    ``cpu``: ``benchmark.scales.CPU_CROSS_DEVICE`` (200 parties of 16 digits at 8x8, public
    pretraining, 2 seeds, update clip 0.1). ``gpu``: the embedded MNIST at 28 px over 200 clients,
    50 rounds (not measured).
    """
    n, q = 200, 0.1
    common = _base(scale, "cross-device", partition="iid", num_clients=n, clients_per_round=round(q * n),
                   local_epochs=1, max_train_images=None, delta=1e-5, class_conditional=True,
                   attacks=MEMBERSHIP_ATTACKS, rounds=50, dataset="mnist-embedded") | scale.cross_device.common
    dp = dict(scale.cross_device.dp) | dict(client_canaries=CLIENT_CANARIES)  # audited at the client level
    out = []
    if common.get("pretrain") is not None:
        out.append(Scenario(name="cross-device-public-only", **(common | dict(rounds=0))))
    out.append(Scenario(name="cross-device-iid-nodp", **common))
    for eps in (10.0, 4.0, 1.0):
        out.append(Scenario(name=f"cross-device-iid-sampled-eps{eps:g}", dp_mode="central-dp-sampled",
                            client_sample_rate=q, target_epsilon=eps, **(common | dp)))
        out.append(Scenario(name=f"cross-device-iid-fixed-eps{eps:g}", dp_mode="central-dp", target_epsilon=eps,
                            **(common | dp)))
        out.append(Scenario(name=f"cross-device-iid-ftrl-eps{eps:g}", dp_mode="central-dp-ftrl", target_epsilon=eps,
                            **(common | dp)))
    out.append(Scenario(name="cross-device-iid-sampled-adaptive-eps10", dp_mode="central-dp-sampled",
                        client_sample_rate=q, adaptive_clipping=True, target_epsilon=10.0, **(common | dp)))
    return tuple(out)


# The grid scenarios (privacy-grid) the CI gate re-runs on every change (scripts/regression.sh): no DP
# and epsilon 4 of both DP modes on IID data, and local DP-SGD under label skew.
REGRESSION_SCENARIOS = ("iid-nodp", "iid-local-eps4", "iid-central-eps4", "dirichlet-0.5-local-eps4")
# The gpu scale's budget for them (one H100, its two seeds; an estimate): the seeds the gate's power
# asks for are weighed against it (benchmark.compare.power_doc, results/README.md).
REGRESSION_GPU_MINUTES = 30


@register_suite("regression")
def regression_suite(scale: Scale) -> tuple[Scenario, ...]:
    """A subset of `privacy-grid` for the regression gate (scripts/regression.sh, bench compare),
    resized by the scale (``regression_scenarios``, ``regression_sizes``).

    ``gpu``: four privacy scenarios at GPU scale with 10 instead of 20 rounds and two seeds (the
    seeds' spread sets the tolerance band of `bench compare`), sized for one H100 in under
    30 minutes (``REGRESSION_GPU_MINUTES``; an estimate from the H200 step timings, not yet
    measured). More seeds would not buy its DP rows power: their band is the noise floor whatever
    the seeds (results/README.md, "Regression gate", gives what it can catch). ``cpu``: the first two
    on 64 images, one round, 16 FID samples and one seed, so that the CPU path of the gate script
    (tests/test_regression_script.py) runs in minutes; CPU Inception dominates its time.
    """
    grid = {s.name: s for s in privacy_grid_suite(scale)}
    names = REGRESSION_SCENARIOS[:scale.regression_scenarios]
    return tuple(dataclasses.replace(grid[f"grid-{n}"], name=f"regression-{n}", suite="regression",
                                     **scale.regression_sizes) for n in names)


@register_suite("seed-paper")
def seed_paper_suite(scale: Scale) -> tuple[Scenario, ...]:
    """The grid of Tun et al. 2023: beta x N clients x E local epochs, 10 clients per round.

    Datasets as in the paper (its CT set is replaced by MedMNIST's pneumonia X-rays, the
    privacy-sensitive medical case we can load from local files). A scale that caps the training
    images gives every client at least 10.
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
                        max_train_images=None if scale.max_train_images is None else max(scale.max_train_images,
                                                                                          10 * n),
                    )))
    return tuple(out)


@register_suite("seed-paper-embedded")
def seed_paper_embedded_suite(scale: Scale) -> tuple[Scenario, ...]:
    """The seed paper's question on data every machine has: does FID grow with the number
    of clients N and with label skew? Dirichlet beta 0.1 / 0.5 / 5 x N = 10 / 30 / 50, 10 clients per
    round, fixed local epochs, no DP, as in Tun et al. 2023 (Fashion-MNIST, N = 10 / 30 / 50: FID
    17.03 / 19.56 / 35.61). ``cpu``: the 8x8 digits with the privacy suite's model, optimizer and
    public pretraining (``benchmark.scales.CPU_SEED_PAPER_EMBEDDED``). ``gpu``: the embedded MNIST
    with unet-28 at the gpu scale's budget."""
    common = _base(scale, "seed-paper-embedded", dataset="mnist-embedded", class_conditional=True,
                   clients_per_round=10, local_epochs=scale.local_epochs) | scale.seed_paper_embedded
    out = []
    for beta in ("0.1", "0.5", "5"):
        for n in (10, 30, 50):
            out.append(Scenario(name=f"paper-embedded-dir{beta}-n{n}", partition=f"dirichlet-{beta}",
                                num_clients=n, **common))
    return tuple(out)
