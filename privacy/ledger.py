"""The server's ledger of local DP-SGD: every client's spend, computed on the server.

:class:`LocalDPLedger` wraps the sampling strategy of a ``local-dpsgd`` run
(:mod:`privacy.mechanisms.local_dpsgd`). It knows each client's image count, hence its plan, and
the rounds it sampled the client in, so it computes every client's epsilon itself, never from what
a client remembers. The row's ``noise_multiplier``, ``sample_rate`` and ``steps`` are the worst
client's (the one whose epsilon is published), so that they recompute to the row's epsilon.

A client is charged ``local_epochs * steps_per_epoch`` steps of its plan for every round it is
sampled in, whether or not its reply is aggregated (it may have trained and sent it). Each
aggregated reply's own report (``epsilon``, and the plan's ``noise_multiplier``, ``sample_rate``
and ``steps``) must agree with the server's figures (``EPSILON_RTOL``); a disagreement (a
restarted node that lost its accountant history, a context carried over from another run, a
client that ran another plan) fails the run with one :class:`LedgerError` line. The published
epsilon is the server's (:meth:`LocalDPLedger.record`), the maximum over clients.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log as flwr_log

from privacy.accounting import sample_level_epsilon

EPSILON_RTOL = 1e-6  # a client's epsilon report must match the server's figure to this relative tolerance


class LedgerError(RuntimeError):
    """A client's privacy report disagrees with the server's ledger (one-line message)."""


class LocalDPLedger(Strategy):
    """Local DP-SGD bookkeeping around ``strategy`` (module docstring). ``plans``: partition ->
    its :class:`privacy.dpsgd.LocalDPPlan`."""

    def __init__(self, strategy: Strategy, *, plans: dict, local_epochs: int, accountant: str, delta: float,
                 partition_to_node: dict[int, int], num_images: dict[int, int],
                 canaries: dict[int, int] | None = None) -> None:
        self.strategy = strategy
        self.plans = plans
        self.local_epochs = local_epochs
        self.accountant = accountant
        self.delta = delta
        self.num_images = num_images
        self.node_to_partition = {n: p for p, n in partition_to_node.items()}
        self.participation: dict[int, list[int]] = {p: [] for p in plans}  # partition -> rounds sampled
        self._epsilons: dict[tuple[int, int], float] = {}
        # White-box canaries (privacy.whitebox): partition -> m, and the scores its replies added up.
        self.canaries = dict(canaries or {})
        self.canary_scores: dict[int, list[float]] = {p: [0.0] * m for p, m in self.canaries.items()}
        self.canary_rounds: dict[int, list[int]] = {p: [] for p in self.canaries}

    def steps_per_round(self, partition: int) -> int:
        return self.local_epochs * self.plans[partition].steps_per_epoch

    def epsilon(self, partition: int, rounds: int) -> float:
        """The client's epsilon after taking part in ``rounds`` rounds (0 for none)."""
        if rounds == 0:
            return 0.0
        if (partition, rounds) not in self._epsilons:
            plan = self.plans[partition]
            self._epsilons[partition, rounds] = sample_level_epsilon(
                noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                steps=rounds * self.steps_per_round(partition), delta=plan.delta, accountant=plan.accountant)
        return self._epsilons[partition, rounds]

    def spent(self) -> float:
        """The largest spend of any client so far (the rounds configured so far)."""
        return max(self.epsilon(p, len(rounds)) for p, rounds in self.participation.items())

    def summary(self) -> None:
        flwr_log(logging.INFO, "\t├──> Local DP: the server accounts every client's spend")
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        msgs = list(self.strategy.configure_train(server_round, arrays, config, grid))
        for msg in msgs:
            self.participation[self.node_to_partition[msg.metadata.dst_node_id]].append(server_round)
        return msgs

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        for reply in replies:
            pid = self.node_to_partition[reply.metadata.src_node_id]
            metrics = next(iter(reply.content.metric_records.values()))
            problem = self.report_problem(pid, server_round, metrics) or self.take_canary_scores(
                pid, server_round, metrics)
            if problem:
                raise LedgerError(f"round {server_round}: partition {pid} {problem}")
        return self.strategy.aggregate_train(server_round, replies)

    def take_canary_scores(self, pid: int, server_round: int, metrics) -> str | None:
        """Add a reply's white-box canary scores to the ledger's and remove them from the reply (they
        are the audit's, not FedAvg's); why they are wrong, or None."""
        from privacy.whitebox import SCORES_KEY

        scores = metrics.get(SCORES_KEY)
        if pid not in self.canaries:
            return None if scores is None else f"sent {SCORES_KEY} but carries no white-box canaries"
        if scores is None or len(scores) != self.canaries[pid]:
            got = "none" if scores is None else f"{len(scores)}"
            return f"sent {got} white-box canary scores, expected {self.canaries[pid]}"
        del metrics[SCORES_KEY]
        total = self.canary_scores[pid]
        self.canary_scores[pid] = [a + float(b) for a, b in zip(total, scores)]
        self.canary_rounds[pid].append(server_round)
        return None

    def report_problem(self, pid: int, server_round: int, metrics) -> str | None:
        """Why a client's privacy report disagrees with the server's figures, or None."""
        plan = self.plans[pid]
        taken = sum(1 for r in self.participation[pid] if r <= server_round)
        expected = {"epsilon": self.epsilon(pid, taken), "noise_multiplier": plan.noise_multiplier,
                    "sample_rate": plan.sample_rate, "steps": self.steps_per_round(pid)}
        for key, want in expected.items():
            got = metrics.get(key)
            if got is None or not math.isclose(float(got), want, rel_tol=EPSILON_RTOL, abs_tol=0.0):
                why = (" (a restarted node that lost its accountant history, or a context carried over from "
                       "another run)" if key == "epsilon" else "")
                return (f"reports {key} {got!r}, the server's figure after {taken} round(s) of its plan is "
                        f"{want:.9g}{why}")
        return None

    def record(self) -> dict:
        """Every client's spend and the published figures (the worst client's)."""
        clients = [{"partition": p, "n_train": self.num_images[p],
                    "noise_multiplier": self.plans[p].noise_multiplier, "sample_rate": self.plans[p].sample_rate,
                    "steps_per_round": self.steps_per_round(p), "rounds": list(self.participation[p]),
                    "steps": len(self.participation[p]) * self.steps_per_round(p),
                    "epsilon": self.epsilon(p, len(self.participation[p]))}
                   for p in sorted(self.plans)]
        # The row's columns are the worst client's whole plan (its noise, rate and steps give the
        # published epsilon); every client's plan stays in ``clients``.
        worst = max(clients, key=lambda c: c["epsilon"])
        whitebox = {}
        for p, m in self.canaries.items():  # one audited partition (privacy.whitebox.AUDITED_PARTITION)
            whitebox = {"partition": p, "m": m, "rounds": list(self.canary_rounds[p]),
                        "sample_rate": self.plans[p].sample_rate,
                        "steps": len(self.participation[p]) * self.steps_per_round(p),
                        "scores": list(self.canary_scores[p])}
        return ({"whitebox": whitebox} if whitebox else {}) | {
                "accountant": f"opacus-{self.accountant}", "delta": self.delta,
                "epsilon": max(c["epsilon"] for c in clients),
                "noise_multiplier": worst["noise_multiplier"], "sample_rate": worst["sample_rate"],
                "steps": worst["steps"], "worst_partition": worst["partition"],
                "max_grad_norm": max(self.plans[p].max_grad_norm for p in self.plans), "clients": clients}

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
