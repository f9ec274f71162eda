"""Scales: how big the same suites are on a given machine.

A :class:`Scale` holds every size and recipe in which the suites differ between machines: the
suites (:mod:`benchmark.suites`) read these fields and never a scale's name, so a new scale is one
entry of :data:`SCALES`. The scale's name is recorded in every scenario (and so in its hash and in
every leaderboard row): runs of different sizes never mix.

Plain data, no project imports: scenario validation (:mod:`benchmark.scenario_rules`) reads the
names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    """A suite's own recipe at a scale: scenario fields every row takes, and what its DP rows change."""

    common: Mapping[str, object] = field(default_factory=dict)
    dp: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Scale:
    """How big the same scenarios are on a given machine. Recorded in every leaderboard row."""

    name: str
    model: str            # UNet config for 28 px grayscale data
    model_rgb: str        # UNet config for 32 px RGB data
    rounds: int
    local_epochs: int     # per round; with rounds and clients_per_round / num_clients: epochs over the data
    max_train_images: int | None  # None: every training image
    batch_size: int
    sample_steps: int
    fid_n_samples: int
    seeds: tuple[int, ...]
    # The federation of privacy-grid (and of the privacy suite where that is the grid).
    grid_num_clients: int
    grid_clients_per_round: int
    # The privacy suite's own recipe, with its controls (privacy-controls) made of it; None: the
    # privacy suite is the grid at this scale, one recipe for every row, so it has no controls.
    privacy: Recipe | None
    # cross-device's fields at this scale over the suite's own; a recipe that pretrains also gives
    # the public-only reference row.
    cross_device: Recipe
    # The regression gate: the first this many of its scenarios (None: all), resized by these fields.
    regression_scenarios: int | None
    regression_sizes: Mapping[str, object]
    # seed-paper-embedded's fields at this scale over the suite's own.
    seed_paper_embedded: Mapping[str, object]
    # What the adversary spends on every attacked scenario (the fields of attacks.base.AttackBudget;
    # part of each such scenario's hash).
    attack_budget: Mapping[str, object]


# The privacy suite at the cpu scale: where a DDPM memorises and where DP's price shows
# within a laptop's budget. Private data: scikit-learn's 8x8 digits, 200 training images over 4
# parties (50 each: a small federation of small sites, the privacy-sensitive regime), every party
# in every round, 20 rounds x 30 local epochs (600 epochs over the data: the no-DP model memorises);
# public pretraining on the embedded MNIST at 8x8 (another population of writers) for 30 epochs.
# Downstream accuracy trains on 2,000 generated digits (200 per class; about 3 s to sample here):
# at the FID's 200 the classifier reads every model 0.2 lower and its spread hides the rows' order.
# Three seeds: the report compares the rows with 95% intervals over seeds (paired, 2 df).
CPU_PRIVACY = dict(dataset="digits-embedded", pretrain="mnist8-embedded", pretrain_epochs=30, num_clients=4,
                   clients_per_round=4, max_train_images=200, heldout_fraction=0.5, canaries=64, rounds=20,
                   local_epochs=30, batch_size=16,
                   learning_rate=1e-3, sample_steps=20, fid_n_samples=200, downstream_n_samples=2000,
                   grad_sample_mode="mixed-ghost-bk", seeds=(0, 1, 2))
# DP-SGD's own budget: a DP step costs a fixed ~40 ms on top of the plain one (per-sample norms), so
# the DP rows take fewer, larger steps: 20 rounds x 10 local epochs at an expected batch of 32
# (sample rate 0.5 on 50 images: q = 1 / ceil(50 / 32)), a third of the no-DP rows' epochs and a
# sixth of their steps.
CPU_PRIVACY_DP = dict(local_epochs=10, batch_size=32, optimizer="sgd", learning_rate=3e-3)

# The cross-device suite at the cpu scale: 200 parties of 16 images each (the embedded MNIST
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

# The seed paper's grid at the cpu scale: the 8x8 digits (all 1,437 training images: 144 down to
# 29 per client) with the privacy suite's model, optimizer and public pretraining, 20 rounds x 5
# local epochs, one seed.
CPU_SEED_PAPER_EMBEDDED = dict(dataset="digits-embedded", pretrain="mnist8-embedded",
                               pretrain_epochs=CPU_PRIVACY["pretrain_epochs"], rounds=20, local_epochs=5,
                               batch_size=16, learning_rate=1e-3, max_train_images=None, sample_steps=20,
                               fid_n_samples=200, seeds=(0,))


SCALES: dict[str, Scale] = {
    # A 2-core laptop CPU: a tiny UNet, a few hundred images, a couple of rounds (the grid; the
    # privacy suite's own cpu budget is CPU_PRIVACY). The regression gate's CPU path
    # (tests/test_regression_script.py) runs two of its scenarios on 64 images, one round, 16 FID
    # samples and one seed, in minutes; CPU Inception dominates its time.
    "cpu": Scale("cpu", "unet-tiny", "unet-tiny", rounds=2, local_epochs=1, max_train_images=256, batch_size=32,
                 sample_steps=10, fid_n_samples=100, seeds=(0,),
                 grid_num_clients=4, grid_clients_per_round=2,
                 privacy=Recipe(CPU_PRIVACY, CPU_PRIVACY_DP),
                 # The DP rows run 3 seeds: the report compares them with 95% intervals over seeds.
                 cross_device=Recipe(CPU_CROSS_DEVICE, dict(max_grad_norm=CROSS_DEVICE_CLIP, seeds=(0, 1, 2))),
                 regression_scenarios=2,
                 regression_sizes=dict(rounds=1, max_train_images=64, fid_n_samples=16, sample_steps=5, seeds=(0,)),
                 seed_paper_embedded=CPU_SEED_PAPER_EMBEDDED,
                 # A small inversion budget (25 L-BFGS evaluations, known randomness only): the CPU
                 # privacy suite must stay within 30 minutes on 2 cores. 8 noise draws per timestep:
                 # the loss attack's score is a mean, and with 2 draws its noise hid half the no-DP
                 # model's memorisation.
                 attack_budget=dict(mia_noise_draws=8, mia_max_candidates=128, inversion_iters=25,
                                    inversion_local_steps=2, inversion_randomness=("known",))),
    # One H100/H200: the 28/32 px UNets, the whole embedded dataset, paper-like rounds, and a training
    # budget in epochs: 20 rounds x half the clients x 10 local epochs = 100 epochs over
    # each party's data (the sampler-cost model needed 40 epochs of unet-tiny for FID 66 at n = 500).
    # Every suite as it defines itself; the regression gate runs with 10 instead of 20 rounds and
    # two seeds (their spread sets the tolerance band of `bench compare`).
    "gpu": Scale("gpu", "unet-28", "unet-32", rounds=20, local_epochs=10, max_train_images=None, batch_size=64,
                 sample_steps=50, fid_n_samples=2000, seeds=(0, 1, 2),
                 grid_num_clients=10, grid_clients_per_round=5,
                 privacy=None,
                 cross_device=Recipe(),
                 regression_scenarios=None,
                 regression_sizes=dict(rounds=10, seeds=(0, 1)),
                 seed_paper_embedded={},
                 # 1000 objective evaluations for each of the two attackers (known and secret randomness).
                 attack_budget=dict(mia_noise_draws=8, mia_max_candidates=2000, inversion_iters=1000,
                                    inversion_restarts=2)),
}
