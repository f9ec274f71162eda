"""Each party's data as its own file: what a SuperNode loads, and the manifest the server reads.

A node owns its data: a SuperNode (or a simulated node) reads its partition's images from one
file and never loads the dataset, and the server never holds images at all: it needs only the
image shape, the number of classes and each partition's image count (the FedAvg weight it
expects a client to report), which :class:`PartitionManifest` carries.

The split itself is :func:`load_federated_data` (deterministic in (scenario, seed), see
:mod:`benchmark.partition`); :func:`export_partitions` writes it, one file per party, so a party
trains on exactly the images, in exactly the order, that indexing the full dataset gives.

Format (``<dir>/partition-<id>.npz``, NumPy's npz, readable without pickle):

- ``images``: uint8 ``(N, C, H, W)``, the party's training images (canaries included for party 0
  of an audit scenario), in the order of its ``train_idx``;
- ``labels``: int64 ``(N,)``;
- ``meta``: a 0-d string array holding JSON: ``format`` (``feddp-partition/1``), ``dataset``,
  ``num_classes``, ``image_shape`` ``[C, H, W]``, ``partition_id``, ``num_partitions``, ``seed``,
  ``scenario_hash`` (the scenario it was exported for), ``partition_key`` and ``num_images``.

``<dir>/manifest.json`` holds the same fields, less ``partition_id``, plus ``partitions``: one
``{partition_id, file, num_images, sha256}`` per party. No images, labels or indices: it is what
a server operator who holds no data is given.

``partition_key`` names the split, not the whole scenario: a hash of the fields that decide which
images a party holds (dataset, partition scheme, number of clients, held-out fraction, image cap,
canaries) and the seed. Scenarios that differ only in training (DP mode, epochs, model, ...) share
a split, so one export serves them all; a file for another split or seed is refused in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.data import ImageDataset, scenario_dataset
from benchmark.partition import ClientSplit, Partition, make_partition
from benchmark.rundir import write_json, write_npz
from benchmark.scenarios import Scenario
from benchmark.seeding import derive_seed

FILE_FORMAT = "feddp-partition/1"
MANIFEST_FORMAT = "feddp-partitions/1"
MANIFEST_NAME = "manifest.json"
SPLIT_FIELDS = ("dataset", "partition", "num_clients", "heldout_fraction", "max_train_images", "canaries")
# Fields that enter the key only when set (a folder dataset's size and channels), so that every
# split exported before them keeps its key.
SPLIT_FIELDS_IF_SET = ("image_size", "channels")


class PartitionFileError(ValueError):
    """A partition file or manifest is missing, malformed, or for another split (one-line message)."""


def partition_file_name(partition_id: int) -> str:
    return f"partition-{int(partition_id)}.npz"


def partition_key(scenario: Scenario, seed: int) -> str:
    """The name of the split (scenario's data fields + seed), 12 hex digits."""
    fields = {f: getattr(scenario, f) for f in SPLIT_FIELDS} | {"seed": int(seed)}
    fields |= {f: getattr(scenario, f) for f in SPLIT_FIELDS_IF_SET if getattr(scenario, f) is not None}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------ the split
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
        if self.dataset.content_hash:  # a folder of one's own: which content this split is of
            d["dataset_sha256"] = self.dataset.content_hash
        if self.partition.scheme == "by-site":  # each party is one site: say which, and that it holds only its own
            for c in d["clients"]:
                own = self.dataset.sites[np.r_[c["train_idx"], c["heldout_idx"]].astype(np.int64)]
                c["site"] = self.dataset.site_names[c["client_id"]]
                c["sites_held"] = sorted({self.dataset.site_names[k] for k in own.tolist() if k >= 0})
        if len(self.canary_members) + len(self.canary_nonmembers):
            d["canaries"] = {"members": self.canary_members.tolist(),
                             "nonmembers": self.canary_nonmembers.tolist(), "client": 0}
        return d


def load_federated_data(scenario: Scenario, seed: int, data_root: str | None,
                        dataset: ImageDataset | None = None) -> FederatedData:
    """The dataset and its partition. Deterministic in (scenario, seed).

    Only the benchmark operator calls this (the runner, the partition export, attacks): parties
    read their own file (:func:`read_partition`), the server a manifest.
    ``dataset``: the scenario's training split, already loaded (to partition many scenarios).
    With ``scenario.canaries = m``, m canary images are appended to the dataset and each is added
    to client 0's training data by an independent fair coin (see :mod:`attacks.canaries`).
    """
    ds = dataset if dataset is not None else scenario_dataset(scenario, "train", data_root or None)
    part = make_partition(
        ds.labels, scheme=scenario.partition, num_clients=scenario.num_clients,
        seed=derive_seed("partition", seed), heldout_fraction=scenario.heldout_fraction,
        max_train_images=scenario.max_train_images, sites=ds.sites, site_names=ds.site_names,
    )
    if not scenario.canaries:
        return FederatedData(ds, part)
    from attacks.canaries import include_canaries, make_canaries

    m = scenario.canaries
    _, c, r, _ = ds.images.shape
    imgs, labels = make_canaries(m, channels=c, resolution=r, num_classes=ds.num_classes,
                                 seed=derive_seed("canary-images", seed))
    inserted, kept_out = include_canaries(m, seed=derive_seed("canary-split", seed))
    base = len(ds.labels)
    ds = dataclasses.replace(ds, images=np.concatenate([ds.images, imgs]), labels=np.concatenate([ds.labels, labels]),
                             sites=None if ds.sites is None else np.concatenate([ds.sites, np.full(m, -1, np.int64)]))
    members, nonmembers = base + inserted, base + kept_out
    first = part.clients[0]
    clients = (ClientSplit(first.client_id, np.concatenate([first.train_idx, members]), first.heldout_idx),
               *part.clients[1:])
    return FederatedData(ds, Partition(part.scheme, part.seed, clients), members, nonmembers)


# ------------------------------------------------------------------ what the server knows
@dataclass(frozen=True)
class PartitionManifest:
    """Image shape, classes and each party's image count: all the server needs, no images."""

    dataset: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    seed: int
    scenario_hash: str
    partition_key: str
    num_images: tuple[int, ...]  # by partition id
    files: tuple[str, ...] = ()
    sha256: tuple[str, ...] = ()

    @property
    def num_partitions(self) -> int:
        return len(self.num_images)

    def to_dict(self) -> dict:
        d = {"format": MANIFEST_FORMAT, "dataset": self.dataset, "num_classes": self.num_classes,
             "image_shape": list(self.image_shape), "num_partitions": self.num_partitions, "seed": self.seed,
             "scenario_hash": self.scenario_hash, "partition_key": self.partition_key}
        d["partitions"] = [{"partition_id": p, "num_images": n,
                            **({"file": self.files[p]} if self.files else {}),
                            **({"sha256": self.sha256[p]} if self.sha256 else {})}
                           for p, n in enumerate(self.num_images)]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PartitionManifest:
        try:
            if d.get("format") != MANIFEST_FORMAT:
                raise PartitionFileError(f"format {d.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            parts = sorted(d["partitions"], key=lambda p: int(p["partition_id"]))
            if [int(p["partition_id"]) for p in parts] != list(range(len(parts))):
                raise PartitionFileError("partition ids are not 0..n-1")
            return cls(dataset=str(d["dataset"]), num_classes=int(d["num_classes"]),
                       image_shape=tuple(int(x) for x in d["image_shape"]), seed=int(d["seed"]),
                       scenario_hash=str(d["scenario_hash"]), partition_key=str(d["partition_key"]),
                       num_images=tuple(int(p["num_images"]) for p in parts),
                       files=tuple(str(p["file"]) for p in parts) if all("file" in p for p in parts) else (),
                       sha256=tuple(str(p["sha256"]) for p in parts) if all("sha256" in p for p in parts) else ())
        except PartitionFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PartitionFileError(f"malformed manifest ({type(e).__name__}: {e})".splitlines()[0]) from None

    def check(self, scenario: Scenario, seed: int, where: str = "manifest") -> PartitionManifest:
        """Refuse a manifest of another split or seed; returns self."""
        _check_split(where, {"seed": self.seed, "partition_key": self.partition_key,
                             "num_partitions": self.num_partitions, "scenario_hash": self.scenario_hash},
                     scenario, seed)
        return self


def _check_split(where: str, meta: dict, scenario: Scenario, seed: int) -> None:
    if int(meta["seed"]) != int(seed):
        raise PartitionFileError(f"{where} is for seed {meta['seed']}, the run uses seed {seed}")
    if int(meta["num_partitions"]) != scenario.num_clients:
        raise PartitionFileError(f"{where} splits the data among {meta['num_partitions']} parties, "
                                 f"scenario {scenario.name!r} has {scenario.num_clients}")
    if meta["partition_key"] != partition_key(scenario, seed):
        raise PartitionFileError(f"{where} holds another split (exported for scenario hash {meta['scenario_hash']}, "
                                 f"split {meta['partition_key']}; scenario {scenario.name!r} seed {seed} needs "
                                 f"split {partition_key(scenario, seed)}): export it again with bench partitions")


def manifest_of(scenario: Scenario, seed: int, fed: FederatedData) -> PartitionManifest:
    ds = fed.dataset
    return PartitionManifest(dataset=ds.name, num_classes=int(ds.num_classes),
                             image_shape=tuple(int(x) for x in ds.images.shape[1:]), seed=int(seed),
                             scenario_hash=scenario.hash, partition_key=partition_key(scenario, seed),
                             num_images=tuple(len(c.train_idx) for c in fed.partition.clients))


def read_manifest(path: str | Path, scenario: Scenario | None = None, seed: int | None = None) -> PartitionManifest:
    """A manifest file (or a folder holding ``manifest.json``), checked against (scenario, seed) if given."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise PartitionFileError(f"no partition manifest at {path} (write one with bench partitions)") from None
    except (OSError, ValueError) as e:
        raise PartitionFileError(f"cannot read partition manifest {path} ({type(e).__name__}: {e})"
                                 .splitlines()[0]) from None
    try:
        manifest = PartitionManifest.from_dict(d)
    except PartitionFileError as e:
        raise PartitionFileError(f"partition manifest {path}: {e}") from None
    return manifest.check(scenario, seed, f"partition manifest {path}") if scenario is not None else manifest


# ------------------------------------------------------------------ export (the operator) and read (a party)
def export_partitions(scenario: Scenario, seed: int, out_dir: str | Path, *, data_root: str | None = None,
                      fed: FederatedData | None = None) -> PartitionManifest:
    """Write ``partition-<id>.npz`` for every party and ``manifest.json`` into ``out_dir``
    (each atomically); return the manifest. ``fed``: the split, already loaded."""
    fed = fed if fed is not None else load_federated_data(scenario, seed, data_root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifest_of(scenario, seed, fed)
    meta = {k: v for k, v in manifest.to_dict().items() if k != "partitions"} | {"format": FILE_FORMAT}
    files, digests = [], []
    for split in fed.partition.clients:
        pid = split.client_id
        images, labels = fed.dataset.images[split.train_idx], fed.dataset.labels[split.train_idx]
        name = partition_file_name(pid)
        site = {"site": fed.dataset.site_names[pid]} if fed.partition.scheme == "by-site" else {}
        write_npz(out_dir / name, images=images, labels=labels,
                  meta=np.array(json.dumps(meta | {"partition_id": pid, "num_images": len(labels)} | site,
                                           sort_keys=True)))
        files.append(name)
        digests.append(hashlib.sha256((out_dir / name).read_bytes()).hexdigest())
    manifest = PartitionManifest(**{**manifest.__dict__, "files": tuple(files), "sha256": tuple(digests)})
    write_json(out_dir / MANIFEST_NAME, manifest.to_dict())
    return manifest


def partition_site(path: str | Path) -> str | None:
    """The site a partition file holds (``by-site`` partitions), else None."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"])).get("site")


@dataclass(frozen=True, eq=False)
class PartitionData:
    """One party's training images and labels, read from its own file."""

    images: np.ndarray
    labels: np.ndarray
    partition_id: int
    meta: dict
    path: Path

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(x) for x in self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def name(self) -> str:
        return str(self.meta["dataset"])


def read_partition(path: str | Path, *, scenario: Scenario, seed: int, partition_id: int) -> PartitionData:
    """Read ONE party's file, refusing it (one line) unless it is partition ``partition_id`` of the
    split of (scenario, seed)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels, meta = z["images"], z["labels"], json.loads(str(z["meta"]))
    except FileNotFoundError:
        raise PartitionFileError(f"partition file {path} does not exist") from None
    except (OSError, ValueError, KeyError) as e:
        raise PartitionFileError(f"cannot read partition file {path} ({type(e).__name__}: {e})"
                                 .splitlines()[0]) from None
    where = f"partition file {path}"
    try:
        if meta.get("format") != FILE_FORMAT:
            raise PartitionFileError(f"{where} has format {meta.get('format')!r}, expected {FILE_FORMAT!r}")
        if int(meta["partition_id"]) != int(partition_id):
            raise PartitionFileError(f"{where} holds partition {meta['partition_id']}, this node is partition "
                                     f"{partition_id}")
        _check_split(where, meta, scenario, seed)
        if images.dtype != np.uint8 or images.ndim != 4 or labels.dtype != np.int64 \
                or labels.shape != (images.shape[0],) or images.shape[0] != int(meta["num_images"]):
            raise PartitionFileError(f"{where}: expected uint8 images (N, C, H, W) and N int64 labels with "
                                     f"N = {meta['num_images']}, got {images.dtype}{list(images.shape)} and "
                                     f"{labels.dtype}{list(labels.shape)}")
    except (KeyError, TypeError) as e:
        raise PartitionFileError(f"{where}: malformed metadata ({type(e).__name__}: {e})") from None
    return PartitionData(images, labels, int(partition_id), meta, path)
