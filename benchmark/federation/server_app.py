"""The Flower ServerApp: FedAvg over the parties' DDPM updates.

Run config (``[tool.flwr.app.config]`` in pyproject.toml, or ``flwr run --run-config``):
``scenario`` (a registered name or a scenario as JSON), ``scale``, ``seed``, ``out-dir`` (where
the final global model and the round history are written), ``device``, and ``partition-manifest``
(the ``manifest.json`` that ``bench partitions`` wrote beside the parties' files) or
``partition-dir`` (the folder holding it; the simulation path,
:mod:`benchmark.federation.simulation`, exports the files and sets it). The server holds no
images: from the manifest it takes the image shape, the classes and each partition's image count.

Clients are sampled with a seeded generator over *partition ids* (learned once with a query
message), not with Flower's unseeded ``random.sample`` over node ids, so a (scenario, seed) pair
always trains the same clients in the same rounds, in simulation and in deployment alike.

Faulty and malicious clients: :class:`ScreenedAggregation` wraps the whole strategy (central DP
wrapper included) and screens every round's replies before anything is clipped or averaged. A
sampled client that raised, did not reply within ``round_timeout_s`` (Flower's ``timeout`` of
``send_and_receive``), or sent arrays with other keys, another key order, shapes or dtypes than the
global model, or any non-finite value (arrays or metrics), or (client-side central clipping) an
update whose L2 norm exceeds the clipping norm, is dropped for that round, logged, and counted in
``history.json`` (``dropped_error``, ``dropped_timeout``, ``rejected_invalid``). A client must
also report the weight the server expects (its partition's image count; 1 under central DP). When fewer than
``min_clients_per_round`` valid updates remain, the round fails with :class:`RoundFailedError`
and the run with it (one line, nothing published). Screening comes *before* the DP wrapper
because Flower 1.42's clipping crashes on a wrong shape and turns NaN into NaN.

Local DP: :class:`LocalDPLedger` (inside the screening) computes every client's epsilon on the
server from its image count and the rounds it was sampled in, checks each client's own report
against it and records it in ``history.json`` (``local_dp``); that figure is the published one.

Key order matters because Flower pairs arrays by *position*: the server-side wrapper computes a
reply's update as ``reply[i] - global[i]`` and clips that, then FedAvg averages by *key*; a reply
with the global model's keys in another order is clipped against the wrong arrays and moves the
aggregate by far more than ``C / clients_per_round``. Requiring the global model's exact key order
makes position and name pair alike. Under ``central_clipping = "client"`` the server clips
nothing, so it checks each update's norm itself (:func:`update_norm`, tolerance
:func:`update_norm_tolerance`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.common.constant import ErrorCode
from flwr.supercore import log as flwr_log

from benchmark.federation import task
from benchmark.federation.partition_files import PartitionManifest, read_manifest
from benchmark.rundir import write_json, write_torch
from benchmark.scenarios import Scenario, get_scenario
from benchmark.seeding import derive_seed
from privacy.modes import get_dp_mode

app = ServerApp()

FLOWER_DEFAULT_TIMEOUT_S = 3600.0  # Strategy.start's default reply timeout
MIN_DISCOVERY_WAIT_S = 600.0  # partition discovery waits at least this long without progress
DISCOVERY_POLL_S = 0.5
# Flower error codes of a query that may succeed when sent again (node not there yet, message expired,
# app process died); any other error (the ClientApp raised or could not load) is final.
RETRY_ERROR_CODES = frozenset({ErrorCode.UNKNOWN, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
                               ErrorCode.NODE_UNAVAILABLE, ErrorCode.CLIENT_APP_CRASHED})


class FederationError(RuntimeError):
    """The federation could not run as configured (one-line message)."""


class RoundFailedError(FederationError):
    """Fewer than the minimum number of valid client updates arrived in a round."""


class SeededFedAvg(FedAvg):
    """FedAvg weighted by sample counts, sampling ``clients_per_round`` partitions per round
    with a generator seeded by (run seed, round)."""

    def __init__(self, *, partition_to_node: dict[int, int], clients_per_round: int, seed: int,
                 **kwargs) -> None:
        super().__init__(fraction_evaluate=0.0, min_evaluate_nodes=0,
                         min_available_nodes=len(partition_to_node), **kwargs)
        self.partition_to_node = partition_to_node
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.sampled: dict[int, list[int]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        rng = np.random.default_rng(derive_seed("client-sampling", self.seed, server_round))
        n = len(self.partition_to_node)
        chosen = sorted(int(p) for p in rng.choice(n, size=self.clients_per_round, replace=False))
        self.sampled[server_round] = chosen
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        nodes = [self.partition_to_node[p] for p in chosen]
        return self._construct_messages(record, nodes, MessageType.TRAIN)


# Client-side clipping: what an honest client's update (Flower's fixedclipping_mod, float32) may exceed
# the clipping norm by. Relative part: the client's float32 norm (BLAS dot, pairwise sums; measured
# ~1e-7 on 1e6 entries) and its float32 rescaling. Absolute part: the client sends global + update
# rounded to the dtype, so the update the server recovers is off by up to half an ulp of each
# weight: at most eps * (||global|| + C) in L2, eps the dtype's machine epsilon (twice that bound).
UPDATE_NORM_RTOL = 1e-5


def update_norm(arrays: ArrayRecord, reference: ArrayRecord) -> float:
    """L2 norm of ``arrays - reference`` over all arrays, paired by name, in float64 (the update
    Flower's ``fixedclipping_mod`` clips: the reply's arrays minus the global model's)."""
    total = 0.0
    for key, ref in reference.items():
        diff = arrays[key].numpy().astype(np.float64) - ref.numpy().astype(np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def update_norm_tolerance(clip: float, reference: ArrayRecord) -> float:
    """How far above ``clip`` an honestly clipped update's norm may come out from rounding:
    ``UPDATE_NORM_RTOL * clip + eps * (||global|| + clip)`` (see ``UPDATE_NORM_RTOL``)."""
    eps = max((float(np.finfo(a.numpy().dtype).eps) for a in reference.values()
               if a.numpy().dtype.kind == "f"), default=0.0)
    ref_norm = math.sqrt(sum(float(np.square(a.numpy().astype(np.float64)).sum()) for a in reference.values()))
    return UPDATE_NORM_RTOL * clip + eps * (ref_norm + clip)


def reply_problem(reply: Message, reference: ArrayRecord, weight_key: str, *,
                  max_update_norm: float | None = None) -> str | None:
    """Why a client's train reply must not be aggregated, or None when it is fine.

    The reply must carry exactly one ArrayRecord with the global model's keys *in the global
    model's order* (Flower's DP wrapper pairs arrays by position), shapes and dtypes, all values
    finite, and one MetricRecord of finite numbers including a positive ``weight_key``. With
    ``max_update_norm`` (client-side clipping) the update's L2 norm (:func:`update_norm`) must not
    exceed it by more than :func:`update_norm_tolerance`.
    """
    content = reply.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return (f"expected one ArrayRecord and one MetricRecord, got {len(content.array_records)} "
                f"and {len(content.metric_records)}")
    arrays = next(iter(content.array_records.values()))
    if set(arrays.keys()) != set(reference.keys()):
        extra, missing = sorted(set(arrays) - set(reference)), sorted(set(reference) - set(arrays))
        return f"array keys differ from the global model's (extra {extra[:3]}, missing {missing[:3]})"
    if list(arrays.keys()) != list(reference.keys()):
        i, (got, want) = next((i, kw) for i, kw in enumerate(zip(arrays.keys(), reference.keys())) if kw[0] != kw[1])
        return f"array keys are in another order than the global model's (position {i}: {got!r}, expected {want!r})"
    for key, ref in reference.items():
        arr = arrays[key]
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != ref.dtype:
            return f"array {key!r} is {arr.dtype}{list(arr.shape)}, expected {ref.dtype}{list(ref.shape)}"
        values = arr.numpy()
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            return f"array {key!r} holds NaN or Inf"
    metrics = next(iter(content.metric_records.values()))
    for key, value in metrics.items():
        vals = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            return f"metric {key!r} is not finite ({value!r})"
    weight = metrics.get(weight_key)
    if weight is None or not weight > 0:
        return f"metric {weight_key!r} must be a positive number, got {weight!r}"
    if max_update_norm is not None:
        norm, tol = update_norm(arrays, reference), update_norm_tolerance(max_update_norm, reference)
        if norm > max_update_norm + tol:
            return (f"update norm {norm:.6g} exceeds the clipping norm {max_update_norm:g} (client-side clipping, "
                    f"tolerance {tol:.2g})")
    return None


def _client_side_clipping_norm(strategy: Strategy) -> float | None:
    """The clipping norm of Flower's client-side clipping wrapper in ``strategy`` or in the
    strategies it wraps (``.strategy``), else None."""
    seen = set()
    while strategy is not None and id(strategy) not in seen:
        seen.add(id(strategy))
        if isinstance(strategy, DifferentialPrivacyClientSideFixedClipping):
            return float(strategy.clipping_norm)
        strategy = getattr(strategy, "strategy", None)
    return None


class ScreenedAggregation(Strategy):
    """Wraps a strategy; drops and counts failed, late and invalid client replies before the
    wrapped strategy (FedAvg or Flower's DP wrapper around it) sees them.

    ``min_replies``: the round fails (:class:`RoundFailedError`) with fewer valid updates.
    ``max_update_norm``: reject updates whose norm exceeds it (plus rounding); by default the
    clipping norm when ``strategy`` is Flower's client-side clipping wrapper (the clients clip, so
    nothing else would check), else None (the server-side wrapper clips every update itself).
    ``rounds[r]`` holds the round's counts: ``sampled``, ``aggregated``, ``dropped_error``,
    ``dropped_timeout``, ``rejected_invalid`` and the ``problems`` seen (node id: reason).
    """

    def __init__(self, strategy: Strategy, *, min_replies: int, weight_key: str,
                 expected_weights: dict[int, float] | None = None,
                 node_names: dict[int, str] | None = None, max_update_norm: float | None = None) -> None:
        self.strategy = strategy
        if max_update_norm is None:
            max_update_norm = _client_side_clipping_norm(strategy)
        self.max_update_norm = max_update_norm
        self.node_names = node_names or {}  # node id -> what history.json calls it
        self.min_replies = min_replies
        self.weight_key = weight_key
        # node id -> the weight it must report: its partition's image count (FedAvg), or 1.0
        # (central DP). The server knows both, so a client cannot inflate its share.
        self.expected_weights = expected_weights or {}
        self.rounds: dict[int, dict] = {}
        self.metrics: dict[int, dict] = {}  # round -> the aggregated client metrics
        self._expected: dict[int, tuple[list[int], ArrayRecord]] = {}

    def summary(self) -> None:
        flwr_log(logging.INFO, "\t├──> Reply screening: minimum %s valid updates per round%s", self.min_replies,
                 "" if self.max_update_norm is None else f", update norm <= {self.max_update_norm:g}")
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        msgs = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._expected[server_round] = ([m.metadata.dst_node_id for m in msgs], arrays)
        return msgs

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        nodes, reference = self._expected.pop(server_round)
        stats = {"sampled": len(nodes), "dropped_error": 0, "dropped_timeout": 0, "rejected_invalid": 0,
                 "problems": {}}
        valid, seen = [], set()
        for reply in replies:
            src = reply.metadata.src_node_id
            if src not in nodes or src in seen:
                stats["rejected_invalid"] += 1
                stats["problems"][self._name(src) + " (extra reply)"] = "not sampled this round, or a second reply"
                continue
            seen.add(src)
            if reply.has_error():
                stats["dropped_error"] += 1
                stats["problems"][self._name(src)] = f"client error: {reply.error.reason}".splitlines()[0][:300]
                continue
            problem = reply_problem(reply, reference, self.weight_key, max_update_norm=self.max_update_norm)
            if problem is None and src in self.expected_weights:
                weight = next(iter(reply.content.metric_records.values()))[self.weight_key]
                if weight != self.expected_weights[src]:
                    problem = f"metric {self.weight_key!r} must be {self.expected_weights[src]:g}, got {weight!r}"
            if problem:
                stats["rejected_invalid"] += 1
                stats["problems"][self._name(src)] = problem
                continue
            valid.append(reply)
        stats["dropped_timeout"] = len(set(nodes) - seen)
        for node in sorted(set(nodes) - seen):
            stats["problems"][self._name(node)] = "no reply before the round timeout"
        stats["aggregated"] = len(valid)
        self.rounds[server_round] = stats
        for node, why in stats["problems"].items():
            flwr_log(logging.WARNING, "round %s: dropped %s: %s", server_round, node, why)
        if len(valid) < self.min_replies:
            raise RoundFailedError(
                f"round {server_round}: {len(valid)} valid update(s) of {len(nodes)} sampled, minimum "
                f"{self.min_replies} (errors {stats['dropped_error']}, timeouts {stats['dropped_timeout']}, "
                f"invalid {stats['rejected_invalid']})")
        # In the order the round's messages were sent (the sampled partitions' order), not the order
        # the replies arrived in: FedAvg's float sums then do not depend on which client was faster,
        # and a non-DP run is bit-reproducible (two fresh-clone runs of the no-DP row differed by
        # 0.3 FID before this).
        position = {node: i for i, node in enumerate(nodes)}
        valid.sort(key=lambda reply: position[reply.metadata.src_node_id])
        out = self.strategy.aggregate_train(server_round, valid)
        metrics = out[1] if isinstance(out, tuple) and len(out) > 1 and out[1] is not None else {}
        self.metrics[server_round] = {k: float(v) for k, v in metrics.items()  # for progress lines
                                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return out

    def _name(self, node_id: int) -> str:
        return self.node_names.get(node_id, f"node {node_id}")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted means as Flower does, except the privacy figures: the worst client counts."""
    out = aggregate_metricrecords(records, weighted_by_key)
    for key, pick in (("epsilon", max), ("sample_rate", max), ("noise_multiplier", min)):
        vals = [float(m[key]) for r in records for m in r.metric_records.values() if key in m]
        if vals:
            out[key] = pick(vals)
    return out


EPSILON_RTOL = 1e-6  # a client's epsilon report must match the server's figure to this relative tolerance


class LocalDPLedger(Strategy):
    """Local DP-SGD bookkeeping on the server: every client's privacy spend, computed from what the
    server knows (the client's image count, hence its plan, :func:`task.local_dp_plan`, and the
    rounds it was sampled in), never from what the client remembers.

    A client is charged ``local_epochs * steps_per_epoch`` steps of its plan for every round it is
    sampled in, whether or not its reply is aggregated (it may have trained and sent it). Each
    aggregated reply's own report (``epsilon``, and the plan's ``noise_multiplier``, ``sample_rate``
    and ``steps``) must agree with the server's figures (``EPSILON_RTOL``); a disagreement (a
    restarted node that lost its accountant history, a context carried over from another run, a
    client that ran another plan) fails the run with one :class:`FederationError` line. The
    published epsilon is the server's (:meth:`record`), the maximum over clients.
    """

    def __init__(self, strategy: Strategy, *, scenario: Scenario, num_images: dict[int, int],
                 partition_to_node: dict[int, int]) -> None:
        self.strategy = strategy
        self.scenario = scenario
        self.num_images = num_images
        self.node_to_partition = {n: p for p, n in partition_to_node.items()}
        by_size = {n: task.local_dp_plan(scenario, n) for n in sorted(set(num_images.values()))}  # one calibration each
        self.plans = {p: by_size[n] for p, n in num_images.items()}
        self.participation: dict[int, list[int]] = {p: [] for p in num_images}  # partition -> rounds sampled
        self._epsilons: dict[tuple[int, int], float] = {}

    def steps_per_round(self, partition: int) -> int:
        return self.scenario.local_epochs * self.plans[partition].steps_per_epoch

    def epsilon(self, partition: int, rounds: int) -> float:
        """The client's epsilon after taking part in ``rounds`` rounds (0 for none)."""
        if rounds == 0:
            return 0.0
        if (partition, rounds) not in self._epsilons:
            from privacy.accounting import sample_level_epsilon

            plan = self.plans[partition]
            self._epsilons[partition, rounds] = sample_level_epsilon(
                noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                steps=rounds * self.steps_per_round(partition), delta=plan.delta, accountant=plan.accountant)
        return self._epsilons[partition, rounds]

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
            problem = self.report_problem(pid, server_round, next(iter(reply.content.metric_records.values())))
            if problem:
                raise FederationError(f"round {server_round}: partition {pid} {problem}")
        return self.strategy.aggregate_train(server_round, replies)

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
        """``history.json``'s ``local_dp``: every client's spend and the published maximum."""
        clients = [{"partition": p, "n_train": self.num_images[p],
                    "noise_multiplier": self.plans[p].noise_multiplier, "sample_rate": self.plans[p].sample_rate,
                    "steps_per_round": self.steps_per_round(p), "rounds": list(self.participation[p]),
                    "steps": len(self.participation[p]) * self.steps_per_round(p),
                    "epsilon": self.epsilon(p, len(self.participation[p]))}
                   for p in sorted(self.plans)]
        taken = [c for c in clients if c["rounds"]] or clients
        return {"accountant": f"opacus-{self.scenario.accountant}", "delta": self.scenario.delta,
                "epsilon": max(c["epsilon"] for c in clients),
                "noise_multiplier": min(c["noise_multiplier"] for c in taken),
                "sample_rate": max(c["sample_rate"] for c in taken), "clients": clients}

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def discover_partitions(grid: Grid, num_clients: int, timeout_s: float = FLOWER_DEFAULT_TIMEOUT_S, *,
                        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                        poll_s: float = DISCOVERY_POLL_S) -> dict[int, int]:
    """Ask the nodes which partition each holds until partitions ``0..num_clients-1`` are all
    claimed; return partition -> node id.

    A slow machine makes this slower, not failed: every node that connects is asked once and its
    answer is collected whenever it comes (Flower's push/pull, no fixed receive window); a query
    Flower reports undelivered (node unavailable, message expired, app process crashed) is sent
    again, with backoff. The wait ends only after ``timeout_s`` *without progress* (no node
    connected, no partition claimed), naming the partitions never claimed and the nodes that never
    answered. What waiting cannot fix fails at once, in one line: two nodes claiming one
    partition, a partition id out of range, a malformed answer, a ClientApp that raised.
    """
    last_progress = clock()
    pending: dict[str, int] = {}  # query message id -> node
    asked: set[int] = set()  # nodes with a query in flight
    retry_at: dict[int, tuple[float, int]] = {}  # node -> (when to ask again, attempts so far)
    claims: dict[int, int] = {}  # partition -> node
    seen: set[int] = set()
    errors: dict[int, str] = {}  # node -> its last (retryable) error
    while True:
        nodes = set(int(n) for n in grid.get_node_ids())
        if nodes - seen:
            seen |= nodes
            last_progress = clock()
        now = clock()
        todo = sorted(n for n in nodes - asked - set(claims.values()) if retry_at.get(n, (0.0, 0))[0] <= now)
        if todo:
            msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in todo]
            for mid, node in zip(grid.push_messages(msgs), todo):
                if mid:
                    pending[str(mid)] = node
                    asked.add(node)
        for reply in grid.pull_messages(list(pending)) if pending else ():
            node = pending.pop(reply.metadata.reply_to_message_id, int(reply.metadata.src_node_id))
            asked.discard(node)
            if reply.has_error():
                reason = f"{reply.error.reason}".splitlines()[0][:200] if reply.error.reason else "no reason given"
                if reply.error.code not in RETRY_ERROR_CODES:
                    raise FederationError(f"node {node} failed the partition query (error code "
                                          f"{reply.error.code}): {reason}")
                errors[node] = f"error code {reply.error.code}: {reason}"
                attempts = retry_at.get(node, (0.0, 0))[1] + 1
                retry_at[node] = (clock() + min(30.0, poll_s * 2 ** attempts), attempts)
                continue
            try:
                pid = int(reply.content["node"]["partition-id"])
            except (KeyError, TypeError, ValueError) as e:
                raise FederationError(f"node {node} sent a malformed partition answer ({type(e).__name__}: {e})"
                                      .splitlines()[0]) from None
            if not 0 <= pid < num_clients:
                raise FederationError(f"node {node} claims partition {pid}, the scenario has partitions "
                                      f"0..{num_clients - 1}")
            if pid in claims and claims[pid] != node:
                raise FederationError(f"nodes {claims[pid]} and {node} both claim partition {pid}")
            claims[pid] = node
            errors.pop(node, None)
            last_progress = clock()
        if len(claims) == num_clients:
            return dict(sorted(claims.items()))
        if clock() - last_progress > timeout_s:
            unclaimed = sorted(set(range(num_clients)) - set(claims))
            silent = sorted(seen - set(claims.values()))
            raise FederationError(
                f"partition discovery made no progress for {timeout_s:.0f} s: partitions {unclaimed} never "
                f"claimed; {len(seen)} node(s) connected, {len(claims)} answered, no answer from nodes {silent}"
                + ("; last errors: " + ", ".join(f"node {n}: {e}" for n, e in sorted(errors.items()))
                   if errors else ""))
        sleep(poll_s)


def server_manifest(run_config: dict, scenario: Scenario, seed: int) -> PartitionManifest:
    """What the server knows of the data, from the run config's ``partition-manifest`` (or the
    ``manifest.json`` in ``partition-dir``), checked against (scenario, seed)."""
    where = str(run_config.get("partition-manifest") or run_config.get("partition-dir") or "")
    if not where:
        raise FederationError("the run config names no partition-manifest: export the parties' files with "
                              "bench partitions and pass partition-manifest=<dir>/manifest.json")
    return read_manifest(where, scenario, seed)


def resolve_scenario(value: str, scale: str) -> Scenario:
    value = value.strip()
    return Scenario.from_json(value) if value.startswith("{") else get_scenario(value, scale)


def run_federation(grid: Grid, run_config: dict,
                   on_round: Callable[[int], None] | None = None,
                   on_round_metrics: Callable[[int, dict], None] | None = None) -> dict:
    """Train one scenario federatedly; write ``global_model.pt`` and ``history.json`` to out-dir."""
    scenario = resolve_scenario(str(run_config["scenario"]), str(run_config.get("scale", "cpu")))
    seed = int(run_config["seed"])
    out_dir = Path(str(run_config["out-dir"]))
    device = str(run_config.get("device", "cpu"))
    partition_dir = str(run_config.get("partition-dir", "") or "")

    manifest = server_manifest(run_config, scenario, seed)
    model = task.build_model(scenario, manifest, seed=derive_seed("init", seed))
    init_weights = str(run_config.get("init-weights", "") or "")
    if scenario.pretrain and not init_weights:
        raise FederationError(f"scenario {scenario.name!r} starts from {scenario.pretrain} pretraining: the run "
                              "config must name its checkpoint (init-weights=<path>, benchmark.pretrain)")
    if init_weights:  # the public checkpoint (benchmark.pretrain), the same for every party
        model.load_state_dict(torch.load(init_weights, map_location="cpu", weights_only=True))
    partition_to_node = discover_partitions(
        grid, scenario.num_clients, max(scenario.round_timeout_s or FLOWER_DEFAULT_TIMEOUT_S, MIN_DISCOVERY_WAIT_S))
    mode = get_dp_mode(scenario.dp_mode)
    central = mode.server_adds_noise
    if central:
        from privacy.central import (DEFAULT_UPDATE_CLIP, UNIFORM_WEIGHT_KEY, calibrate_central,
                                     wrap_central_dp)
    fedavg = strategy = SeededFedAvg(
        partition_to_node=partition_to_node, clients_per_round=scenario.clients_per_round, seed=seed,
        min_train_nodes=scenario.clients_per_round, train_metrics_aggr_fn=aggregate_train_metrics,
        weighted_by_key=UNIFORM_WEIGHT_KEY if central else "num-examples")
    privacy_info: dict = {}
    if scenario.poisson_clients:  # central-dp-sampled: Poisson participation, amplified accounting
        from benchmark.federation.sampled import sampled_strategy

        strategy, privacy_info = sampled_strategy(scenario, partition_to_node)
        fedavg = strategy  # its sampled partitions and weight key, as SeededFedAvg's
    elif central:
        clip = scenario.max_grad_norm or DEFAULT_UPDATE_CLIP
        sigma = calibrate_central(target_epsilon=scenario.target_epsilon, delta=scenario.delta,
                                  rounds=scenario.rounds, num_clients=scenario.num_clients)
        strategy = wrap_central_dp(fedavg, noise_multiplier=sigma, clipping_norm=clip,
                                   clients_per_round=scenario.clients_per_round,
                                   num_clients=scenario.num_clients, delta=scenario.delta,
                                   side=scenario.central_clipping)
        privacy_info = {"noise_multiplier": sigma, "max_grad_norm": clip, "sample_rate": 1.0,
                        "accountant": "flwr-rdp-no-amplification", "clipping": scenario.central_clipping}
    ledger = None
    if mode.clients_run_dpsgd:
        strategy = ledger = LocalDPLedger(strategy, scenario=scenario, partition_to_node=partition_to_node,
                                          num_images=dict(enumerate(manifest.num_images)))
    screened = ScreenedAggregation(
        strategy, min_replies=scenario.min_replies, weight_key=fedavg.weighted_by_key,
        node_names={n: f"partition {p}" for p, n in partition_to_node.items()},
        expected_weights={n: 1.0 if central else float(manifest.num_images[p]) for p, n in partition_to_node.items()})
    train_config = ConfigRecord({
        "scenario": scenario.to_json(), "seed": seed, "device": device,
        # Simulation: where the simulated parties' own files lie (a deployment's nodes name theirs).
        **({"partition-dir": partition_dir} if partition_dir else {}),
    })

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if on_round is not None and server_round > 0:
            on_round(server_round)
        if on_round_metrics is not None and server_round > 0:  # the round's aggregate and screening counts
            stats = {k: v for k, v in screened.rounds.get(server_round, {}).items() if k != "problems"}
            on_round_metrics(server_round, {**screened.metrics.get(server_round, {}), **stats})
        return None

    t0 = time.perf_counter()
    result = screened.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=scenario.rounds, train_config=train_config,
                            timeout=scenario.round_timeout_s or FLOWER_DEFAULT_TIMEOUT_S,
                            evaluate_fn=evaluate_fn)
    train_s = time.perf_counter() - t0
    missing = [r for r in range(1, scenario.rounds + 1) if r not in result.train_metrics_clientapp]
    if missing:
        raise FederationError(f"rounds {missing} produced no aggregate (all clients failed)")

    if central:
        spent = strategy.privacy_spent()
        privacy_info |= {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_torch(out_dir / "global_model.pt", result.arrays.to_torch_state_dict())
    history = {
        "train_s": train_s,
        "central_dp": privacy_info,
        **({"local_dp": ledger.record()} if ledger is not None else {}),
        "rounds": [
            {"round": r, "sampled_partitions": fedavg.sampled.get(r, []),
             **{k: v for k, v in screened.rounds.get(r, {}).items() if k != "problems"},
             **{k: float(v) for k, v in result.train_metrics_clientapp[r].items()},
             "problems": screened.rounds.get(r, {}).get("problems", {})}
            for r in sorted(result.train_metrics_clientapp)
        ],
    }
    write_json(out_dir / "history.json", history)
    return history


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, dict(context.run_config))
