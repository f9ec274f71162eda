"""The server's reply screening: failed, late and invalid client replies are dropped and counted
before any strategy (FedAvg or a DP mechanism's) sees them.

:class:`ScreenedAggregation` wraps the whole strategy (a DP wrapper included) and screens every
round's replies before anything is clipped or averaged. A sampled client that raised, did not
reply within ``round_timeout_s`` (Flower's ``timeout`` of ``send_and_receive``), or sent arrays
with other keys, another key order, shapes or dtypes than the global model, or any non-finite
value (arrays or metrics), or (client-side central clipping) an update whose L2 norm exceeds the
clipping norm, is dropped for that round, logged, and counted in ``history.json``
(``dropped_error``, ``dropped_timeout``, ``rejected_invalid``). A client must also report the
weight the server expects (its mechanism's :meth:`~privacy.mechanisms.base.Mechanism.expected_weight`).
When fewer than the scenario's ``min_replies`` valid updates remain, the round fails with
:class:`RoundFailedError` and the run with it (one line, nothing published). Screening comes
*before* the DP wrapper because Flower 1.42's clipping crashes on a wrong shape and turns NaN into NaN.

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
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy
from flwr.supercore import log as flwr_log

from benchmark.federation.errors import RoundFailedError


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
        # and a non-DP run is bit-reproducible.
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
