"""Model and local training for one federated client (shared by both apps).

A party's data come from its own partition file (:mod:`benchmark.federation.partition_files`,
which also holds the split itself: :func:`load_federated_data`, re-exported here).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.data import ImageDataset
from benchmark.federation.partition_files import (FederatedData, PartitionData, PartitionManifest,  # noqa: F401
                                                  load_federated_data)
from benchmark.model import build_unet, make_scheduler, train_epochs
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
    """The scenario's client optimizer. ``sgd`` is plain SGD: under DP-SGD its step moves the weights
    by the learning rate times the noised gradient, so the noise's effect grows with the noise
    multiplier; Adam divides by the gradient's running scale and takes steps of about the learning
    rate whatever the noise (the cpu privacy suite's DP rows, issue 16)."""
    if scenario.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=scenario.learning_rate)
    return torch.optim.Adam(model.parameters(), lr=scenario.learning_rate)


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


def local_train(scenario: Scenario, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                images: np.ndarray, labels: np.ndarray, *, device: str, seed: int) -> dict:
    """Non-private local training for ``local_epochs`` epochs (privacy/ wraps this for DP modes)."""
    return train_epochs(
        model, optimizer, make_scheduler(scenario.num_train_timesteps), images, labels,
        epochs=scenario.local_epochs, batch_size=scenario.batch_size,
        conditional=scenario.class_conditional, device=device, seed=seed,
    )


def local_dp_plan(scenario: Scenario, n_train: int):
    """The DP-SGD calibration of a client with ``n_train`` images (same on server and client)."""
    from privacy.dpsgd import DEFAULT_MAX_GRAD_NORM, plan_local_dp

    return plan_local_dp(
        n_train=n_train, batch_size=scenario.batch_size, rounds=scenario.rounds,
        local_epochs=scenario.local_epochs, target_epsilon=scenario.target_epsilon, delta=scenario.delta,
        max_grad_norm=scenario.max_grad_norm or DEFAULT_MAX_GRAD_NORM, accountant=scenario.accountant,
        grad_sample_mode=scenario.grad_sample_mode, noise_multiplicity=scenario.noise_multiplicity,
    )
