"""The model both Flower apps build, and the client optimizer and its state across rounds.

A party's data come from its own partition file (:mod:`benchmark.federation.partition_files`,
which also holds the split itself); the local training step is the DP mechanism's
(:meth:`privacy.mechanisms.base.Mechanism.train_client`).
"""

from __future__ import annotations

import torch

from benchmark.data import ImageDataset
from benchmark.federation.partition_files import PartitionData, PartitionManifest
from benchmark.model import build_unet
from benchmark.optimizers import get_optimizer
from benchmark.scenarios import Scenario


def build_model(scenario: Scenario, data: ImageDataset | PartitionManifest | PartitionData, *,
                seed: int | None = None):
    """The scenario's UNet for ``data``'s image shape and classes (a dataset, the server's
    manifest, or a party's own partition: the same model from each)."""
    c, h, w = data.image_shape if hasattr(data, "image_shape") else data.images.shape[1:]
    name = data.dataset if isinstance(data, PartitionManifest) else data.name
    if h != w:
        raise ValueError(f"dataset {name!r} has non-square images ({h}x{w})")
    return build_unet(scenario.model, in_channels=c, resolution=h,
                      num_classes=data.num_classes if scenario.class_conditional else None,
                      seed=seed)


def make_optimizer(model: torch.nn.Module, scenario: Scenario) -> torch.optim.Optimizer:
    """The scenario's client optimizer (:data:`benchmark.optimizers.OPTIMIZERS`); an unknown name
    is refused, never replaced by another optimizer."""
    return get_optimizer(scenario.optimizer)(model.parameters(), lr=scenario.learning_rate)


def optimizer_state_to_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an optimizer's per-parameter state into named tensors (for Flower's ArrayRecord)."""
    flat = {}
    for pid, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            flat[f"{pid}.{key}"] = torch.as_tensor(val).detach().cpu().clone()
    return flat


def load_optimizer_state(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for name, val in flat.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    sd["state"] = state
    opt.load_state_dict(sd)
