"""Federated partitions: membership bookkeeping, determinism and label skew."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.data import load_dataset
from benchmark.partition import (
    ClientSplit,
    Partition,
    PartitionError,
    label_histograms,
    make_partition,
    parse_scheme,
)


@pytest.fixture(scope="module")
def mnist_labels() -> np.ndarray:
    return load_dataset("mnist-embedded").labels  # sorted by label: catches slicing of the raw order


def mean_tv(labels: np.ndarray, part: Partition, num_classes: int = 10) -> float:
    """Mean total-variation distance between each client's train label distribution and the global one."""
    hist = label_histograms(labels, [c.train_idx for c in part.clients], num_classes)
    local = hist / hist.sum(axis=1, keepdims=True)
    glob = np.bincount(labels, minlength=num_classes) / labels.size
    return float(0.5 * np.abs(local - glob).sum(axis=1).mean())


@pytest.mark.parametrize("scheme", ["iid", "dirichlet-0.1", "dirichlet-1"])
@pytest.mark.parametrize("max_train", [None, 300])
def test_sets_disjoint_and_within_pool(mnist_labels, scheme, max_train):
    part = make_partition(mnist_labels, scheme=scheme, num_clients=10, seed=3, max_train_images=max_train)
    assert len(part.clients) == 10 and [c.client_id for c in part.clients] == list(range(10))
    sets = [s for c in part.clients for s in (c.train_idx, c.heldout_idx)]
    every = np.concatenate(sets)
    assert np.unique(every).size == every.size  # no image in two sets
    assert every.min() >= 0 and every.max() < mnist_labels.size
    assert all(s.dtype == np.int64 for s in sets)
    assert all(c.train_idx.size >= 1 and c.heldout_idx.size >= 1 for c in part.clients)
    assert np.intersect1d(part.members(), part.heldout()).size == 0
    np.testing.assert_array_equal(np.sort(every), np.union1d(part.members(), part.heldout()))
    if max_train is None:
        assert every.size == mnist_labels.size  # the whole dataset is used


def test_heldout_fraction(mnist_labels):
    part = make_partition(mnist_labels, scheme="iid", num_clients=4, seed=0, heldout_fraction=0.3)
    for c in part.clients:
        per_client = mnist_labels.size // 4
        held = round(0.3 * per_client)
        assert c.heldout_idx.size == held and c.train_idx.size == per_client - held


def test_deterministic_and_seeded(mnist_labels):
    for scheme in ("iid", "dirichlet-0.3"):
        a = make_partition(mnist_labels, scheme=scheme, num_clients=5, seed=11)
        b = make_partition(mnist_labels, scheme=scheme, num_clients=5, seed=11)
        c = make_partition(mnist_labels, scheme=scheme, num_clients=5, seed=12)
        assert a == b and a.to_dict() == b.to_dict()
        assert a != c


def test_iid_not_a_slice_of_sorted_order(mnist_labels):
    part = make_partition(mnist_labels, scheme="iid", num_clients=10, seed=0)
    for c in part.clients:
        assert np.unique(mnist_labels[c.train_idx]).size == 10


def test_json_round_trip(mnist_labels):
    part = make_partition(mnist_labels, scheme="dirichlet-0.5", num_clients=6, seed=2, max_train_images=200)
    d = json.loads(json.dumps(part.to_dict()))
    back = Partition.from_dict(d)
    assert back == part and back.scheme == "dirichlet-0.5" and back.seed == 2
    assert all(c.train_idx.dtype == np.int64 for c in back.clients)
    with pytest.raises(PartitionError):
        Partition.from_dict({"scheme": "iid"})


def test_overlap_rejected():
    with pytest.raises(PartitionError, match="overlap"):
        Partition("iid", 0, (ClientSplit(0, np.array([1, 2]), np.array([3])), ClientSplit(1, np.array([4]), np.array([2]))))


@pytest.mark.parametrize("max_train", [50, 400, 1000])
def test_max_train_images(mnist_labels, max_train):
    for scheme in ("iid", "dirichlet-0.5"):
        part = make_partition(mnist_labels, scheme=scheme, num_clients=5, seed=1, max_train_images=max_train)
        pool = part.members().size + part.heldout().size
        assert pool == int(np.ceil(max_train / 0.8))
        assert abs(part.members().size - max_train) <= 5  # per-client rounding only


def test_max_train_images_larger_than_dataset():
    labels = np.repeat(np.arange(3), 10)
    part = make_partition(labels, scheme="iid", num_clients=3, seed=0, max_train_images=10_000)
    assert part.members().size + part.heldout().size == 30


def test_parse_scheme():
    assert parse_scheme("iid") == ("iid", None)
    assert parse_scheme("dirichlet-0.5") == ("dirichlet", 0.5)
    assert parse_scheme("dirichlet-100") == ("dirichlet", 100.0)
    for bad in ("dirichlet-0", "dirichlet--1", "dirichlet-abc", "dirichlet-", "dirichlet-nan", "shards", ""):
        with pytest.raises(PartitionError) as err:
            parse_scheme(bad)
        assert "\n" not in str(err.value)


def test_validation(mnist_labels):
    small = np.arange(5) % 2
    with pytest.raises(PartitionError) as err:
        make_partition(small, scheme="iid", num_clients=10, seed=0)
    assert "10" in str(err.value) and "5" in str(err.value)
    with pytest.raises(PartitionError):
        make_partition(small, scheme="iid", num_clients=3, seed=0)  # 3 clients x 2 images > 5
    with pytest.raises(PartitionError, match="num_clients"):
        make_partition(mnist_labels, scheme="iid", num_clients=0, seed=0)
    for frac in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(PartitionError, match="heldout_fraction"):
            make_partition(mnist_labels, scheme="iid", num_clients=2, seed=0, heldout_fraction=frac)
    with pytest.raises(PartitionError, match="alpha"):
        make_partition(mnist_labels, scheme="dirichlet-0", num_clients=2, seed=0)
    with pytest.raises(PartitionError, match="unknown"):
        make_partition(mnist_labels, scheme="pathological", num_clients=2, seed=0)


def test_dirichlet_impossible_min_per_client():
    labels = np.repeat(np.arange(2), 10)  # two classes, 20 images
    with pytest.raises(PartitionError, match="tries"):
        make_partition(labels, scheme="dirichlet-0.001", num_clients=8, seed=0, min_per_client=2)


def test_dirichlet_skew_ordering(mnist_labels):
    seeds = range(4)
    tv = {
        s: np.mean([mean_tv(mnist_labels, make_partition(mnist_labels, scheme=s, num_clients=10, seed=k)) for k in seeds])
        for s in ("iid", "dirichlet-0.1", "dirichlet-0.5", "dirichlet-100")
    }
    assert tv["iid"] < 0.15
    assert tv["dirichlet-0.1"] > 0.5
    assert tv["iid"] < tv["dirichlet-0.5"] < tv["dirichlet-0.1"]
    assert tv["dirichlet-100"] < 0.15


def test_heldout_follows_client_distribution(mnist_labels):
    agree = total = 0
    for seed in range(3):
        part = make_partition(mnist_labels, scheme="dirichlet-0.1", num_clients=10, seed=seed)
        train_h = label_histograms(mnist_labels, [c.train_idx for c in part.clients], 10)
        held_h = label_histograms(mnist_labels, [c.heldout_idx for c in part.clients], 10)
        agree += int((train_h.argmax(1) == held_h.argmax(1)).sum())
        total += len(part.clients)
        # each class's held-out share is proportional to its train share (within rounding)
        expected = (train_h + held_h) * 0.2
        assert np.abs(held_h - expected).max() <= 2
    assert agree >= 0.8 * total


def test_label_histograms():
    labels = np.array([0, 1, 1, 2, 2, 2])
    hist = label_histograms(labels, [np.array([0, 1]), np.array([3, 4, 5]), np.array([], dtype=np.int64)], 4)
    assert hist.tolist() == [[1, 1, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]
    with pytest.raises(PartitionError):
        label_histograms(labels, [np.array([5])], 2)
