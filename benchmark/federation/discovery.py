"""Which node holds which partition: the server asks every node once, before the first round."""

from __future__ import annotations

import time
from collections.abc import Callable

from flwr.app import Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from benchmark.federation.errors import FederationError

FLOWER_DEFAULT_TIMEOUT_S = 3600.0  # Strategy.start's default reply timeout
MIN_DISCOVERY_WAIT_S = 600.0  # partition discovery waits at least this long without progress
DISCOVERY_POLL_S = 0.5
# Flower error codes of a query that may succeed when sent again (node not there yet, message expired,
# app process died); any other error (the ClientApp raised or could not load) is final.
RETRY_ERROR_CODES = frozenset({ErrorCode.UNKNOWN, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
                               ErrorCode.NODE_UNAVAILABLE, ErrorCode.CLIENT_APP_CRASHED})


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
