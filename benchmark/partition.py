"""Federated partitioning with recorded membership.

A membership-inference benchmark needs to know, for every client, exactly
which images it trained on (members) and a same-distribution set it did NOT
train on (held-out non-members).  This module produces both from a label
vector, deterministically from a seed, and serialises them so an attack run
can be matched to the exact training run it evaluates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ClientSplit",
    "Partition",
    "PartitionError",
    "label_histograms",
    "make_partition",
    "parse_scheme",
]

MAX_DIRICHLET_TRIES = 1000


class PartitionError(ValueError):
    """Invalid partition request or data; messages are one line."""


def _index_array(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
        raise PartitionError(f"{what} must be a 1-D array of non-negative integers")
    return arr.astype(np.int64)


@dataclass(frozen=True, eq=False)
class ClientSplit:
    """One client's members (``train_idx``) and same-distribution non-members (``heldout_idx``).

    ``eq=False`` because field-wise ``==`` on arrays is ambiguous; ``__eq__``
    below compares the index arrays exactly.
    """

    client_id: int
    train_idx: np.ndarray
    heldout_idx: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "client_id", int(self.client_id))
        object.__setattr__(self, "train_idx", _index_array(self.train_idx, "train_idx"))
        object.__setattr__(self, "heldout_idx", _index_array(self.heldout_idx, "heldout_idx"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientSplit):
            return NotImplemented
        return (
            self.client_id == other.client_id
            and np.array_equal(self.train_idx, other.train_idx)
            and np.array_equal(self.heldout_idx, other.heldout_idx)
        )


@dataclass(frozen=True)
class Partition:
    """All clients' splits plus what produced them (scheme, seed).

    Construction checks the invariant membership inference relies on: no image
    index appears twice anywhere, so a held-out image is never a member of any
    client.
    """

    scheme: str
    seed: int
    clients: tuple[ClientSplit, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "clients", tuple(self.clients))
        ids = [c.client_id for c in self.clients]
        if len(set(ids)) != len(ids):
            raise PartitionError(f"duplicate client ids in partition: {ids}")
        every = np.concatenate([np.zeros(0, np.int64)] + [a for c in self.clients for a in (c.train_idx, c.heldout_idx)])
        if np.unique(every).size != every.size:
            raise PartitionError("partition index sets overlap: an image is in more than one train/held-out set")

    def members(self) -> np.ndarray:
        """Sorted union of all clients' training indices."""
        return np.sort(np.concatenate([np.zeros(0, np.int64)] + [c.train_idx for c in self.clients]))

    def heldout(self) -> np.ndarray:
        """Sorted union of all clients' held-out (non-member) indices."""
        return np.sort(np.concatenate([np.zeros(0, np.int64)] + [c.heldout_idx for c in self.clients]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (plain ints and lists)."""
        return {
            "scheme": self.scheme,
            "seed": int(self.seed),
            "clients": [
                {
                    "client_id": c.client_id,
                    "train_idx": c.train_idx.tolist(),
                    "heldout_idx": c.heldout_idx.tolist(),
                }
                for c in self.clients
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Partition:
        """Inverse of :meth:`to_dict`; malformed input raises PartitionError."""
        try:
            clients = tuple(
                ClientSplit(c["client_id"], np.asarray(c["train_idx"], dtype=np.int64), np.asarray(c["heldout_idx"], dtype=np.int64))
                for c in d["clients"]
            )
            return cls(scheme=str(d["scheme"]), seed=int(d["seed"]), clients=clients)
        except PartitionError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise PartitionError(f"malformed partition dict ({type(exc).__name__}: {exc})") from exc


def parse_scheme(scheme: str) -> tuple[str, float | None]:
    """``"iid"`` -> ``("iid", None)``; ``"dirichlet-0.5"`` -> ``("dirichlet", 0.5)``;
    ``"by-site"`` -> ``("by-site", None)``."""
    text = str(scheme).strip().lower()
    if text in ("iid", "by-site"):
        return text, None
    if text.startswith("dirichlet-"):
        try:
            alpha = float(text[len("dirichlet-"):])
        except ValueError:
            alpha = math.nan
        if not math.isfinite(alpha):
            raise PartitionError(f"bad scheme {scheme!r}: expected dirichlet-<alpha> with a finite number alpha > 0")
        if alpha <= 0:
            raise PartitionError(f"bad scheme {scheme!r}: Dirichlet alpha must be > 0, got {alpha:g}")
        return "dirichlet", alpha
    raise PartitionError(f"unknown partition scheme {scheme!r}; expected 'iid', 'dirichlet-<alpha>' or 'by-site'")


def _dirichlet_split(
    labels: np.ndarray, pool: np.ndarray, num_clients: int, alpha: float, min_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew of Hsu et al. 2019: each class is divided among clients by proportions ~ Dir(alpha).

    Redrawn (from the same seeded generator, so still deterministic) until
    every client holds at least ``min_per_client`` images.
    """
    by_class = [pool[labels[pool] == c] for c in np.unique(labels[pool])]  # pool is shuffled, so is each class
    for _ in range(MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * idx.size).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        shards = [np.concatenate(p) for p in parts]
        if min(s.size for s in shards) >= min_per_client:
            return shards
    raise PartitionError(
        f"dirichlet-{alpha:g}: no draw in {MAX_DIRICHLET_TRIES} tries gave all {num_clients} clients "
        f">= {min_per_client} of {pool.size} images; use fewer clients, a larger alpha or more images"
    )


def _split_heldout(shard: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split a client's images into (train, heldout) with matching label mix.

    Systematic sampling over the client's label-grouped list (shuffled within
    each class, random start) gives every class its proportional held-out
    share to within one image, so non-members follow the members' label
    distribution even for small clients.
    """
    n = shard.size
    n_held = min(max(int(round(fraction * n)), 1), n - 1)
    shuffled = shard[rng.permutation(n)]
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]
    picks = np.floor((np.arange(n_held) + rng.random()) * (n / n_held)).astype(np.int64)
    held = np.zeros(n, dtype=bool)
    held[picks] = True
    return np.sort(grouped[~held]), np.sort(grouped[held])


def make_partition(
    labels: np.ndarray,
    *,
    scheme: str,
    num_clients: int,
    seed: int,
    heldout_fraction: float = 0.2,
    max_train_images: int | None = None,
    min_per_client: int = 2,
    sites: np.ndarray | None = None,
    site_names: Sequence[str] = (),
) -> Partition:
    """Split a labelled dataset across clients, each with members and held-out non-members.

    Steps: seeded permutation (datasets often come sorted by label) ->
    optional random pool of ``ceil(max_train_images / (1 - heldout_fraction))``
    images -> iid or Dirichlet label-skew split across clients, or ``by-site``: client k is site k
    (``sites``: each image's site index; a natural partition, as LEAF's writers) -> per-client
    held-out share, drawn within the client's own images.  Same inputs and seed give the
    identical partition.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise PartitionError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    kind, alpha = parse_scheme(scheme)
    if int(num_clients) != num_clients or num_clients < 1:
        raise PartitionError(f"num_clients must be a positive integer, got {num_clients}")
    num_clients = int(num_clients)
    if not 0.0 < heldout_fraction < 1.0:
        raise PartitionError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if min_per_client < 2:
        raise PartitionError(f"min_per_client must be >= 2 (one train and one held-out image), got {min_per_client}")
    if max_train_images is not None and max_train_images < 1:
        raise PartitionError(f"max_train_images must be >= 1 or None, got {max_train_images}")

    n = labels.size
    if kind == "by-site":
        if sites is None or not len(site_names):
            raise PartitionError("partition 'by-site' needs a dataset with sites (folder:PATH laid out as "
                                 "PATH/<site>/<class>/<image>)")
        if num_clients != len(site_names):
            raise PartitionError(f"partition 'by-site': num_clients must equal the number of sites, "
                                 f"{len(site_names)} ({', '.join(site_names)}), got {num_clients}")
    pool_size = n if max_train_images is None else min(n, math.ceil(max_train_images / (1.0 - heldout_fraction)))
    if num_clients > pool_size:
        raise PartitionError(f"more clients ({num_clients}) than images ({pool_size})")
    if num_clients * min_per_client > pool_size:
        raise PartitionError(
            f"{num_clients} clients need >= {min_per_client} images each but only {pool_size} images are available"
        )

    rng = np.random.default_rng(seed)
    pool = rng.permutation(n)[:pool_size].astype(np.int64)
    if kind == "iid":
        shards = np.array_split(pool, num_clients)
        canonical = "iid"
    elif kind == "by-site":
        site_of = np.asarray(sites, dtype=np.int64)
        shards = [pool[site_of[pool] == k] for k in range(num_clients)]
        small = [site_names[k] for k, sh in enumerate(shards) if sh.size < min_per_client]
        if small:
            raise PartitionError(f"partition 'by-site': site {small[0]} has fewer than {min_per_client} training "
                                 "images (one member and one held-out image at least)")
        canonical = "by-site"
    else:
        shards = _dirichlet_split(labels, pool, num_clients, alpha, min_per_client, rng)
        canonical = f"dirichlet-{alpha:g}"

    clients = []
    for cid, shard in enumerate(shards):
        train, held = _split_heldout(shard, labels, heldout_fraction, rng)
        clients.append(ClientSplit(cid, train, held))
    return Partition(scheme=canonical, seed=int(seed), clients=tuple(clients))


def label_histograms(labels: np.ndarray, index_sets: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-set label counts, shape ``(len(index_sets), num_classes)``; for measuring label skew."""
    labels = np.asarray(labels)
    out = np.zeros((len(index_sets), num_classes), dtype=np.int64)
    for row, idx in enumerate(index_sets):
        sub = labels[np.asarray(idx, dtype=np.int64)]
        if sub.size and (sub.min() < 0 or sub.max() >= num_classes):
            raise PartitionError(f"index set {row} has labels outside [0, {num_classes}): [{sub.min()}, {sub.max()}]")
        out[row] = np.bincount(sub, minlength=num_classes)
    return out
