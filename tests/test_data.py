"""Loaders against small files written in each dataset's real on-disk format."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from benchmark.data import (
    DATASETS,
    DatasetError,
    ImageDataset,
    dataset_names,
    default_data_root,
    load_dataset,
)

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------- writers


def _idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x00000800 | arr.ndim  # 0x08 = unsigned byte
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_idx_dataset(root: Path, name: str, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    _write(root / name / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), gz)
    _write(root / name / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), gz)


def rand_images(shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("split,prefix", [("train", "train"), ("test", "t10k")])
def test_idx_roundtrip(tmp_path, name, gz, split, prefix):
    images = rand_images((7, 28, 28))
    labels = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    write_idx_dataset(tmp_path, name, prefix, images, labels, gz)
    ds = load_dataset(name, data_root=tmp_path, split=split)
    assert isinstance(ds, ImageDataset) and ds.name == name and ds.num_classes == 10
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.images[:, 0], images)
    np.testing.assert_array_equal(ds.labels, labels)


def test_idx_truncated(tmp_path):
    images, labels = rand_images((4, 28, 28)), np.arange(4, dtype=np.uint8)
    write_idx_dataset(tmp_path, "mnist", "train", images, labels, gz=False)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", data_root=tmp_path)
    msg = str(err.value)
    assert "truncated" in msg and "train-images-idx3-ubyte" in msg and "\n" not in msg


def test_idx_truncated_gzip_stream(tmp_path):
    images, labels = rand_images((4, 28, 28)), np.arange(4, dtype=np.uint8)
    write_idx_dataset(tmp_path, "mnist", "train", images, labels, gz=True)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", data_root=tmp_path)


def test_idx_wrong_magic(tmp_path):
    images, labels = rand_images((4, 28, 28)), np.arange(4, dtype=np.uint8)
    write_idx_dataset(tmp_path, "fashion-mnist", "train", images, labels, gz=False)
    path = tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">I", 0x00000803) + path.read_bytes()[4:])
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", data_root=tmp_path)
    msg = str(err.value)
    assert "train-labels-idx1-ubyte" in msg and "0x00000803" in msg and "\n" not in msg


def test_idx_label_count_mismatch(tmp_path):
    write_idx_dataset(tmp_path, "mnist", "train", rand_images((4, 28, 28)), np.arange(3, dtype=np.uint8), gz=False)
    with pytest.raises(DatasetError, match="3 labels"):
        load_dataset("mnist", data_root=tmp_path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", data_root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte") in msg
    assert "--data-root" in msg and "\n" not in msg


# ---------------------------------------------------------------- CIFAR-10


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"test", b"data": images.reshape(len(labels), -1), b"labels": labels}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10(tmp_path, split):
    directory = tmp_path / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    all_imgs, all_labels = [], []
    for k, fname in enumerate(files):
        imgs = rand_images((2, 3, 32, 32))
        labels = [k % 10, (k + 7) % 10]
        write_cifar_batch(directory / fname, imgs, labels)
        all_imgs.append(imgs)
        all_labels += labels
    ds = load_dataset("cifar10", data_root=tmp_path, split=split)
    assert ds.images.shape == (2 * len(files), 3, 32, 32) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images, np.concatenate(all_imgs))
    np.testing.assert_array_equal(ds.labels, all_labels)


def test_cifar10_channel_order(tmp_path):
    # One red image: in the channel-major row the first 1024 bytes are R.
    row = np.zeros(3072, dtype=np.uint8)
    row[:1024] = 255
    row[1024:2048] = np.arange(1024) % 256  # G varies over pixels in row-major order
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar_batch(directory / "test_batch", row[None], [6])
    ds = load_dataset("cifar10", data_root=tmp_path, split="test")
    assert (ds.images[0, 0] == 255).all() and (ds.images[0, 2] == 0).all()
    assert ds.images[0, 1, 0, 5] == 5 and ds.images[0, 1, 1, 0] == 32
    assert ds.labels.tolist() == [6]


def test_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", data_root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "cifar-10-python.tar.gz" in msg and "\n" not in msg

    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", data_root=tmp_path, split="test")
    assert "test_batch" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- SVHN


def test_svhn(tmp_path):
    n = 5
    imgs = rand_images((n, 3, 32, 32))  # what we expect back, (N, C, H, W)
    x = np.ascontiguousarray(imgs.transpose(2, 3, 1, 0))  # SVHN layout (H, W, C, N)
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(tmp_path / "svhn" / "train_32x32.mat", {"X": x, "y": y})
    ds = load_dataset("svhn", data_root=tmp_path)
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images, imgs)
    assert ds.images[2, 1, 4, 7] == x[4, 7, 1, 2]  # channel, row, column each in place
    assert ds.labels.tolist() == [0, 1, 2, 0, 9] and ds.labels.dtype == np.int64


def test_svhn_missing_and_corrupt(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("svhn", data_root=tmp_path, split="test")
    msg = str(err.value)
    assert str(tmp_path / "svhn" / "test_32x32.mat") in msg and "ufldl.stanford.edu" in msg and "\n" not in msg
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"\x00" * 50)
    with pytest.raises(DatasetError, match="test_32x32.mat"):
        load_dataset("svhn", data_root=tmp_path, split="test")


# ---------------------------------------------------------------- MedMNIST


def test_medmnist_gray_and_rgb(tmp_path):
    (tmp_path / "medmnist").mkdir()
    gray = rand_images((6, 28, 28))
    np.savez(
        tmp_path / "medmnist" / "pneumoniamnist.npz",
        train_images=gray, train_labels=np.array([[0], [1], [1], [0], [1], [0]], dtype=np.uint8),
        val_images=gray[:2], val_labels=np.array([[0], [1]], dtype=np.uint8),
        test_images=gray[:3], test_labels=np.array([[1], [0], [1]], dtype=np.uint8),
    )
    ds = load_dataset("medmnist:pneumoniamnist", data_root=tmp_path)
    assert ds.name == "medmnist:pneumoniamnist" and ds.num_classes == 2
    assert ds.images.shape == (6, 1, 28, 28)
    np.testing.assert_array_equal(ds.images[:, 0], gray)
    assert ds.labels.tolist() == [0, 1, 1, 0, 1, 0]

    rgb = rand_images((4, 28, 28, 3))
    np.savez(
        tmp_path / "medmnist" / "bloodmnist.npz",
        train_images=rgb[:1], train_labels=np.array([[2]]),
        test_images=rgb, test_labels=np.array([0, 7, 3, 3]),  # (N,) labels also accepted
    )
    ds = load_dataset("medmnist:bloodmnist", data_root=tmp_path, split="test")
    assert ds.images.shape == (4, 3, 28, 28) and ds.num_classes == 8
    np.testing.assert_array_equal(ds.images, rgb.transpose(0, 3, 1, 2))
    assert ds.labels.tolist() == [0, 7, 3, 3]


def test_medmnist_errors(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("medmnist:dermamnist", data_root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "medmnist" / "dermamnist.npz") in msg and "zenodo.org/records/10519652" in msg
    assert "\n" not in msg

    (tmp_path / "medmnist").mkdir()
    np.savez(tmp_path / "medmnist" / "dermamnist.npz", test_images=rand_images((2, 28, 28)))
    with pytest.raises(DatasetError) as err:
        load_dataset("medmnist:dermamnist", data_root=tmp_path)
    msg = str(err.value)
    assert "dermamnist.npz" in msg and "train_images" in msg and "train_labels" in msg

    (tmp_path / "medmnist" / "octmnist.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DatasetError, match="octmnist.npz"):
        load_dataset("medmnist:octmnist", data_root=tmp_path)

    with pytest.raises(DatasetError, match="medmnist:<subset>"):
        load_dataset("medmnist:", data_root=tmp_path)


# ---------------------------------------------------------------- embedded and registry


def test_mnist_embedded():
    ds = load_dataset("mnist-embedded")
    assert ds.images.shape == (4000, 1, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.num_classes == 10
    assert np.bincount(ds.labels).tolist() == [400] * 10
    assert ds.images.max() == 255
    # The fixed stratified test split: 100 per class, disjoint from train, the same every call.
    test = load_dataset("mnist-embedded", split="test")
    assert np.bincount(test.labels).tolist() == [100] * 10
    train_rows = {row.tobytes() for row in ds.images.reshape(len(ds.images), -1)}
    overlap = sum(row.tobytes() in train_rows for row in test.images.reshape(len(test.images), -1))
    assert overlap <= 2  # MNIST has a handful of pixel-identical duplicates; no index is shared
    np.testing.assert_array_equal(load_dataset("mnist-embedded", split="test").images, test.images)


def test_digits_embedded():
    ds = load_dataset("digits-embedded", split="test")
    train = load_dataset("digits-embedded")
    assert len(ds) + len(train) == 1797 and 340 <= len(ds) <= 380
    assert ds.images.shape[1:] == (1, 8, 8) and ds.images.dtype == np.uint8
    assert ds.images.max() == 255 and ds.num_classes == 10


def test_unknown_name_and_bad_split(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet", data_root=tmp_path)
    msg = str(err.value)
    assert all(n in msg for n in dataset_names()) and "medmnist:<subset>" in msg and "\n" not in msg
    with pytest.raises(DatasetError, match="split"):
        load_dataset("mnist-embedded", split="val")


def test_registry_and_default_root(monkeypatch, tmp_path):
    assert set(dataset_names()) == set(DATASETS) >= {
        "mnist-embedded", "digits-embedded", "mnist", "fashion-mnist", "cifar10", "svhn"
    }
    monkeypatch.setenv("FEDDP_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("FEDDP_DATA_ROOT")
    assert default_data_root() == Path.home() / ".cache" / "feddp-bench" / "data"
