"""A ClientApp with faulty parties, for tests: our ClientApp, except that the partitions named in
the scenario-independent environment variable ``FEDDP_FAULTY`` (``"1:raise,2:hang,3:nan"``)
misbehave in every round. It runs under Flower's simulation engine with the real ServerApp logic.
"""

from __future__ import annotations

import os
import time

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from benchmark.federation import client_app as ours

app = ClientApp()


def faults() -> dict[int, str]:
    spec = os.environ.get("FEDDP_FAULTY", "")
    return {int(p): kind for p, kind in (item.split(":") for item in spec.split(",") if item)}


@app.query()
def query(msg: Message, context: Context) -> Message:
    return ours.query(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    kind = faults().get(int(context.node_config["partition-id"]))
    if kind == "raise":
        raise RuntimeError("faulty client: simulated crash")
    if kind == "hang":
        # Past the round timeout; not forever: Flower's simulation waits for in-flight tasks
        # before it shuts down.
        time.sleep(float(os.environ.get("FEDDP_HANG_S", "60")))
    reply = ours.train(msg, context)
    if kind == "nan":
        arrays = reply.content["arrays"].to_torch_state_dict()
        first = next(iter(arrays))
        arrays[first] = torch.full_like(arrays[first], float("nan"))
        reply.content["arrays"] = ArrayRecord(arrays)
    if kind == "shape":
        arrays = reply.content["arrays"].to_torch_state_dict()
        first = next(iter(arrays))
        arrays[first] = torch.zeros(3, 3)
        reply.content["arrays"] = ArrayRecord(arrays)
    return reply
