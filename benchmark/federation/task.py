"""Model, data and local training for one federated client (shared by both apps)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from benchmark.data import ImageDataset, load_dataset
from benchmark.model import build_unet, make_scheduler, train_epochs
from benchmark.partition import ClientSplit, Partition, make_partition
from benchmark.scenarios import Scenario
from benchmark.seeding import derive_seed


@dataclass(frozen=True)
class FederatedData:
    dataset: ImageDataset
    partition: Partition
    # Audit canaries (attacks.canaries): dataset indices planted in client 0 / kept out.
    canary_members: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    canary_nonmembers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def partition_record(self) -> dict:
        """What partition.json holds: every client's indices, and the canaries if any."""
        d = self.partition.to_dict()
        if len(self.canary_members):
            d["canaries"] = {"members": self.canary_members.tolist(),
                             "nonmembers": self.canary_nonmembers.tolist(), "client": 0}
        return d


def load_federated_data(scenario: Scenario, seed: int, data_root: str | None,
                        dataset: ImageDataset | None = None) -> FederatedData:
    """The dataset and its partition. Deterministic in (scenario, seed): server and clients agree.

    ``dataset``: the scenario's training split, already loaded (to partition many scenarios).
    With ``scenario.canaries = k``, 2k canary images are appended to the dataset and k of them
    are added to client 0's training data (see :mod:`attacks.canaries`).
    """
    ds = dataset if dataset is not None else load_dataset(scenario.dataset, data_root=data_root or None,
                                                          split="train")
    part = make_partition(
        ds.labels, scheme=scenario.partition, num_clients=scenario.num_clients,
        seed=derive_seed("partition", seed), heldout_fraction=scenario.heldout_fraction,
        max_train_images=scenario.max_train_images,
    )
    if not scenario.canaries:
        return FederatedData(ds, part)
    from attacks.canaries import make_canaries, split_canaries

    k = scenario.canaries
    _, c, r, _ = ds.images.shape
    imgs, labels = make_canaries(2 * k, channels=c, resolution=r, num_classes=ds.num_classes,
                                 seed=derive_seed("canary-images", seed))
    inserted, kept_out = split_canaries(k, seed=derive_seed("canary-split", seed))
    base = len(ds.labels)
    ds = ImageDataset(ds.name, np.concatenate([ds.images, imgs]), np.concatenate([ds.labels, labels]),
                      ds.num_classes)
    members, nonmembers = base + inserted, base + kept_out
    first = part.clients[0]
    clients = (ClientSplit(first.client_id, np.concatenate([first.train_idx, members]), first.heldout_idx),
               *part.clients[1:])
    return FederatedData(ds, Partition(part.scheme, part.seed, clients), members, nonmembers)


def build_model(scenario: Scenario, dataset: ImageDataset, *, seed: int | None = None):
    _, c, h, w = dataset.images.shape
    if h != w:
        raise ValueError(f"dataset {dataset.name!r} has non-square images ({h}x{w})")
    return build_unet(scenario.model, in_channels=c, resolution=h,
                      num_classes=dataset.num_classes if scenario.class_conditional else None,
                      seed=seed)


def make_optimizer(model: torch.nn.Module, scenario: Scenario) -> torch.optim.Optimizer:
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
