"""Central DP-FTRL (Kairouz et al. 2021, "Practical and Private (Deep) Learning without Sampling or
Shuffling"), a Flower Strategy: tree-aggregated noise on the running sum of clipped client updates.

Schedule. The ``N`` clients are dealt in **tree epochs** of ``T = N / k`` rounds: at the first round
of an epoch the server draws a permutation of the partition ids (from the run seed: the order is
public, nothing here rests on its secrecy) and deals it ``k = clients_per_round`` per round, so each
client takes part exactly once per epoch. :class:`privacy.tree_aggregation.ParticipationGuard`
checks every round's participants (canary clients included) and raises on a second participation
within an epoch; the tree, the guard and the epoch's base model restart at each epoch's first round.
The participation schema the epsilon assumes, "each client at most once per epoch of T rounds, the
tree restarted each epoch", is written into the ``privacy`` record (``participation``).

Round ``t`` of an epoch (1-based). ``aggregate_train`` takes each reply's update ``u_i = reply_i -
global model`` (L2 over all float arrays, float64), clips it to ``C`` (``u_i min(1, C / |u_i|)``),
sums the clipped updates into ``v_t`` and adds ``v_t`` to the epoch's
:class:`privacy.tree_aggregation.TreeAggregator` (node noise ``N(0, (z C)^2)`` per coordinate, from
a secret generator): the release is the noisy prefix sum ``S_t = v_1 + ... + v_t + tree noise``, and
the new global model is ``theta_epoch_start + S_t / k`` (server learning rate 1, no momentum: Kairouz
et al.'s momentum variant is post-processing of the same prefix sums and is not implemented). A
client that fails or is rejected is absent from ``v_t``: the denominator ``k`` is public and the
round still releases (the tree must take one step per round).

Privacy (:func:`privacy.accounting.ftrl_epsilon`): replace-with-special one client (its update
replaced by zero; it keeps its slot in the public schedule), one contribution per epoch, so each
epoch is dp_accounting's ``SingleEpochTreeAggregationDpEvent`` over its ``T`` steps and the epochs
compose. No amplification is claimed: the schedule may be public. The guarantee covers the released
models and what is computed from them, not the server (it sees every raw update) nor its log.

White-box audit (``canaries``, :class:`privacy.canary_clients.TreeCanaryClients`): every included
canary client takes part in the first round of every epoch (the slot whose leaf lies in the most
released nodes, ``depth(T)``: the sensitivity the accountant charges), clipped by the same
:meth:`clip_factor`, in an audit block with its own tree of the same noise std from the same
generator. ``plant`` (:mod:`privacy.plants`, auditing the audit only): the noise std or the clip
differ from what the accountant is charged, for the model and the canaries alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

from benchmark.seeding import derive_seed
from privacy.accounting import FTRL_ACCOUNTANT, ftrl_epsilon
from privacy.central_sampled import clipped_sum, train_messages
from privacy.mechanisms.base import UNIFORM_WEIGHT_KEY
from privacy.noise import secret_numpy_rng
from privacy.tree_aggregation import ParticipationGuard, TreeAggregator


@dataclass(frozen=True)
class FTRLPrivacySpent:
    epsilon: float
    delta: float
    num_releases: int
    epoch_steps: tuple[int, ...]
    accounting_method: str = FTRL_ACCOUNTANT


@dataclass
class TreeRelease:
    """What the server did in one round (its own log)."""

    epoch: int
    step: int
    sampled: list[int]
    aggregated: int = 0
    noise_std: float = 0.0      # of the released model's noise, per coordinate: z C sqrt(popcount(t)) / k
    norms: list[float] = field(default_factory=list)


def participation_schema(num_clients: int, clients_per_round: int) -> str:
    """The participation the epsilon assumes, in words (the ``privacy`` record's ``participation``)."""
    rounds = num_clients // clients_per_round
    return (f"each client at most once per epoch of {rounds} rounds ({num_clients} clients dealt "
            f"{clients_per_round} per round in a permutation drawn from the run seed), the tree restarted each epoch")


class TreeFTRL(Strategy):
    """DP-FTRL with a dealt schedule, clipped sum and tree-aggregated Gaussian noise (module docstring).

    ``partition_to_node``: partition id -> node id; ``N`` is its size and must be a multiple of
    ``clients_per_round``. ``noise_multiplier``: ``z``, the node noise in units of the clipping norm
    (calibrated for the target epsilon with :func:`privacy.accounting.ftrl_noise`). ``seed``: the
    run seed, which orders each epoch's deal. ``noise_rng`` defaults to a secret generator; tests pass
    a seeded one.
    """

    def __init__(self, *, partition_to_node: dict[int, int], clients_per_round: int, noise_multiplier: float,
                 clipping_norm: float, delta: float, seed: int, noise_rng: np.random.Generator | None = None,
                 weighted_by_key: str = UNIFORM_WEIGHT_KEY, canaries=None, plant=None) -> None:
        super().__init__()
        if not partition_to_node:
            raise ValueError("no clients to deal")
        n = len(partition_to_node)
        if not 1 <= clients_per_round <= n or n % clients_per_round:
            raise ValueError(f"DP-FTRL deals every client once per epoch: the {n} clients must be a multiple of "
                             f"clients_per_round = {clients_per_round}")
        if noise_multiplier < 0 or clipping_norm <= 0:
            raise ValueError("noise multiplier must be >= 0 and clipping norm > 0")
        if plant is not None and plant.rate_factor != 1.0:
            raise ValueError(f"plant {plant.name!r} changes a sampling rate; DP-FTRL samples nobody")
        self.partition_to_node = dict(sorted(partition_to_node.items()))
        self.clients_per_round = clients_per_round
        self.rounds_per_epoch = n // clients_per_round
        self.noise_multiplier = noise_multiplier
        self.clip = clipping_norm
        self.delta = delta
        self.seed = seed
        self.noise_rng = noise_rng if noise_rng is not None else secret_numpy_rng()
        self.weighted_by_key = weighted_by_key
        self.canaries = canaries                   # privacy.canary_clients.TreeCanaryClients, or None
        # A planted defect (privacy.plants): what the strategy does; the accountant is still charged
        # noise_multiplier and the clipping norm.
        self.plant = plant
        self.noise_factor = plant.noise_factor if plant else 1.0
        self.guard = ParticipationGuard()
        self.releases: dict[int, TreeRelease] = {}
        self.sampled: dict[int, list[int]] = {}    # round -> partitions (the server's log)
        self._current: dict[int, tuple[int, int, ArrayRecord]] = {}   # round -> (epoch, step, global model)
        self._order: list[int] = []                # the current epoch's deal
        self._epoch: int | None = None
        self._epoch_base: dict[str, np.ndarray] = {}  # the global model at the epoch's start (float arrays)
        self._tree: TreeAggregator | None = None
        self._canary_tree: TreeAggregator | None = None

    @property
    def node_std(self) -> float:
        """The noise std drawn per tree node and coordinate (``z C``; a noise plant scales it)."""
        return self.noise_multiplier * self.clip * self.noise_factor

    def clip_factor(self, norm: float) -> float:
        """The factor an update of L2 norm ``norm`` is scaled by: ``min(1, C / norm)`` (1 for a zero
        update, and under a planted ``clip-off``)."""
        if norm <= 0 or (self.plant is not None and self.plant.unclipped):
            return 1.0
        return min(1.0, self.clip / norm)

    def epoch_and_step(self, server_round: int) -> tuple[int, int]:
        """(epoch, step within it), both from the round (epoch 0-based, step 1-based)."""
        if server_round < 1:
            raise ValueError(f"rounds start at 1, got {server_round}")
        epoch, index = divmod(server_round - 1, self.rounds_per_epoch)
        return epoch, index + 1

    def epoch_order(self, epoch: int) -> list[int]:
        """The deal of ``epoch``: a permutation of the partition ids from (run seed, epoch)."""
        parts = list(self.partition_to_node)
        rng = np.random.default_rng(derive_seed("ftrl-epoch-order", self.seed, epoch))
        return [parts[i] for i in rng.permutation(len(parts))]

    def summary(self) -> None:
        log(INFO, "\t├──> DP-FTRL (tree aggregation): %d clients, %d per round, tree restarted every %d rounds, "
            "z = %g, C = %g", len(self.partition_to_node), self.clients_per_round, self.rounds_per_epoch,
            self.noise_multiplier, self.clip)

    # -- train -------------------------------------------------------------------------------
    def _start_epoch(self, epoch: int, arrays: ArrayRecord) -> None:
        self._epoch = epoch
        self._order = self.epoch_order(epoch)
        self.guard.restart()
        names = list(arrays.keys())
        self._epoch_base = {k: arrays[k].numpy().astype(np.float64) for k in names
                            if arrays[k].numpy().dtype.kind == "f"}
        size = sum(v.size for v in self._epoch_base.values())
        self._tree = TreeAggregator((size,), self.node_std, self.noise_rng, max_steps=self.rounds_per_epoch)
        if self.canaries is not None:
            self._canary_tree = TreeAggregator((self.canaries.m,), self.node_std, self.noise_rng,
                                               max_steps=self.rounds_per_epoch)
            self.canaries.restart()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        epoch, step = self.epoch_and_step(server_round)
        if step == 1:
            self._start_epoch(epoch, arrays)
        elif epoch != self._epoch:
            raise ValueError(f"round {server_round} is step {step} of epoch {epoch}, which never started")
        k = self.clients_per_round
        chosen = self._order[(step - 1) * k: step * k]
        canaries = [("canary", int(j)) for j in self.canaries.ids] if self.canaries is not None and step == 1 else []
        self.guard.admit(chosen + canaries)   # a second participation in the epoch raises
        self.sampled[server_round] = chosen
        self._current[server_round] = (epoch, step, arrays)
        return train_messages(server_round, arrays, config, chosen, self.partition_to_node)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, sum, add to the epoch's tree; the model is the epoch's start plus the noisy prefix sum / k."""
        epoch, step, current = self._current.pop(server_round)
        names = list(current.keys())
        base = {k: current[k].numpy() for k in names}
        floats = list(self._epoch_base)
        replies = list(replies)
        rel = TreeRelease(epoch=epoch, step=step, sampled=self.sampled.get(server_round, []), aggregated=len(replies))
        total, rel.norms = clipped_sum(replies, base, floats, self.clip_factor)
        flat = np.concatenate([total[k].ravel() for k in floats]) if floats else np.zeros(0)
        prefix = self._tree.add(flat, step=step)
        out, offset = {}, 0
        for k in names:
            if k in self._epoch_base:
                start = self._epoch_base[k]
                moved = start + prefix[offset: offset + start.size].reshape(start.shape) / self.clients_per_round
                out[k] = Array(np.asarray(moved, dtype=base[k].dtype))
                offset += start.size
            else:
                out[k] = Array(base[k])   # integer buffers are kept as they are
        if self.canaries is not None:
            self._release_canaries(step)
        rel.noise_std = self.node_std * math.sqrt(len(self._tree.node_levels())) / self.clients_per_round
        self.releases[server_round] = rel
        metrics = aggregate_metricrecords([r.content for r in replies], self.weighted_by_key) if replies \
            else MetricRecord()
        metrics["clip_norm"] = self.clip
        metrics["noise_std"] = rel.noise_std
        return ArrayRecord(out), metrics

    def _release_canaries(self, step: int) -> None:
        """The audit block of this round: at an epoch's first round every included canary's clipped
        update (a Dirac of norm far above C, through :meth:`clip_factor`), added to the block's own
        tree (same std, same generator); the released prefix sum goes to the canaries' scores."""
        c = self.canaries
        block = np.zeros(c.m, dtype=np.float64)
        if step == 1:
            norm = c.update_norm(self.clip)
            block[c.ids] = norm * self.clip_factor(norm)
        c.release(self._canary_tree.add(block, step=step), self.clip, step=step)

    # -- evaluate: none (the runner evaluates the released model) -----------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    # -- accounting ----------------------------------------------------------------------------
    def epoch_steps(self) -> tuple[int, ...]:
        """The steps of each epoch released so far (the last one possibly still running)."""
        steps: dict[int, int] = {}
        for rel in self.releases.values():
            steps[rel.epoch] = max(steps.get(rel.epoch, 0), rel.step)
        return tuple(steps[e] for e in sorted(steps))

    def privacy_spent(self) -> FTRLPrivacySpent:
        """Epsilon after every release so far: each epoch's tree over its steps, composed."""
        steps = self.epoch_steps()
        if not steps:
            eps = 0.0
        elif self.noise_multiplier == 0:
            eps = math.inf
        else:
            eps = ftrl_epsilon(noise_multiplier=self.noise_multiplier, epoch_steps=steps, delta=self.delta)
        return FTRLPrivacySpent(epsilon=eps, delta=self.delta, num_releases=len(self.releases), epoch_steps=steps)
