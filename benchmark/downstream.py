"""Downstream accuracy: a small CNN trained on generated images, scored on real test images.

The metric DPImageBench ranks by: a class-conditional generator is only useful if a classifier
trained on its samples recognises real images.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from benchmark.images import check_images
from benchmark.seeding import torch_seeded


def _classifier(in_channels: int, num_classes: int) -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )


DOWNSTREAM_MIN_STEPS = 200
DOWNSTREAM_PASSES = 32


def downstream_steps(n: int, batch_size: int = 64) -> int:
    """The classifier's Adam steps for ``n`` training images: ``DOWNSTREAM_PASSES`` passes over
    the set, and never fewer than ``DOWNSTREAM_MIN_STEPS`` (the 200 of sets up to 400 images)."""
    return max(DOWNSTREAM_MIN_STEPS, math.ceil(DOWNSTREAM_PASSES * n / batch_size))


def downstream_accuracy(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                        test_labels: np.ndarray, *, num_classes: int, steps: int | None = None,
                        batch_size: int = 64, seed: int = 0, device: str = "cpu") -> float:
    """Train a small CNN on (generated) ``train_images`` and return its accuracy on real ``test_images``.

    ``steps`` Adam steps; by default :func:`downstream_steps` (about 32 passes over the set, at
    least 200 steps). ``seed`` fixes the initial weights and the batches; the process's global
    torch generator is left as it was.

    The set's size matters: on the privacy suite's models, 200 generated digits read 0.51-0.54
    where 2,000 read 0.71-0.73 (the public checkpoint and the epsilon-10 rows alike), so a row's
    accuracy is only comparable at the same ``downstream_n_train``.
    """
    steps = downstream_steps(len(train_images), batch_size) if steps is None else steps
    train_images, test_images = check_images(train_images, "train"), check_images(test_images, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(f"train and test images differ in shape: {train_images.shape[1:]} vs {test_images.shape[1:]}")
    rng = np.random.default_rng(seed)
    with torch_seeded(seed):
        model = _classifier(train_images.shape[1], num_classes).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x_all = torch.as_tensor(train_images).float().div(127.5).sub(1)
        y_all = torch.as_tensor(np.asarray(train_labels, dtype=np.int64))
        model.train()
        for _ in range(steps):
            idx = torch.as_tensor(rng.choice(len(x_all), size=min(batch_size, len(x_all)), replace=False))
            loss = torch.nn.functional.cross_entropy(model(x_all[idx].to(device)), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test_images), 512):
            x = torch.as_tensor(test_images[i:i + 512]).float().div(127.5).sub(1).to(device)
            pred = model(x).argmax(1).cpu().numpy()
            correct += int((pred == np.asarray(test_labels[i:i + 512])).sum())
    return correct / len(test_images)

