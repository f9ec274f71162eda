"""FID and KID of uint8 images, their cached reference statistics, and the FID reference and floor
of a dataset.

Features come from the extractor a scenario names (:mod:`benchmark.fid_extractors`; by default
clean-fid's clean mode on the offline network of :mod:`benchmark.inception`).

KID and the reference cache
---------------------------
:func:`reference_stats` caches ``mu``, ``sigma`` *and* the real features (stored as
float32, which is lossless: the network outputs float32) in
``<cache_dir>/fid_stats/<key>__<sanitised fid_impl>.npz``, so :func:`compute_fid`
with a ``real_key`` always reports KID too.  Loading a cached entry does not need the
network.  KID uses clean-fid's ``kernel_distance`` with the global NumPy RNG seeded
(and restored afterwards) so results are reproducible.

Shipped references
------------------
The FID reference and floor features of the ``privacy`` suite (README command 1's) ship with the
package (``benchmark/fid_reference/``, written by ``scripts/ship_fid_reference.py``): on a cache
miss they are used before the network, so a fresh machine's first run skips two Inception passes
(about 35 s of README command 1 on the 2-core build machine) and every machine scores against
the same reference bytes. Each file records the SHA-256 of the images it was computed from: it is
used only for exactly those images (another dataset under the same key is computed here), and a
file whose bytes or record disagree with its name is refused in one line (a damaged install).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import cleanfid.fid as _cf_fid
from benchmark.cache import cache_dir_path
from benchmark.fid_extractors import get_extractor
from benchmark.images import check_images
from pytorch_fid.fid_score import calculate_frechet_distance as _pf_frechet


def inception_features(images: np.ndarray, *, device: str = "cpu", batch_size: int = 64,
                       progress: bool = False, cache_dir=None, extractor: str = "clean") -> np.ndarray:
    """Pool3 Inception features (float64, (N, 2048)) of uint8 NCHW images.

    ``extractor="clean"``: clean-fid clean mode on the offline TorchScript network (default);
    ``"pytorch-fid"``: pytorch-fid's network and bilinear resize, from its cached weights file.
    """
    images = check_images(images)
    return get_extractor(extractor).features(images, device=device, batch_size=batch_size, progress=progress,
                                             cache_dir=cache_dir)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov(rowvar=False)``) of (N, D) features, float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance_reference(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance via ``pytorch_fid.fid_score.calculate_frechet_distance`` (scipy sqrtm)."""
    with warnings.catch_warnings():
        # scipy>=1.14 deprecates sqrtm(disp=...), which pytorch-fid passes
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        return float(_pf_frechet(mu1, sigma1, mu2, sigma2))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The same Frechet distance as pytorch-fid, computed through symmetric eigendecompositions.

    tr sqrtm(S1 S2) = sum sqrt(eig(R S2 R)) with R = S1^(1/2), all symmetric PSD: two ``eigh``
    calls instead of scipy's general ``sqrtm`` (about 1.8 s instead of 15 s for 2048x2048 on a
    2-core CPU). Tests check it against :func:`frechet_distance_reference` (pytorch-fid) and
    clean-fid's own implementation.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def kid(feats_a: np.ndarray, feats_b: np.ndarray, *, seed: int = 0) -> float:
    """KID via clean-fid's ``kernel_distance`` (100 subsets of <= 1000), reproducible with ``seed``.

    clean-fid samples subsets from the global NumPy RNG; it is seeded here and restored after.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError("KID needs at least 2 samples per set")
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return float(_cf_fid.kernel_distance(a, b))
    finally:
        np.random.set_state(state)


# ------------------------------------------------------------------ reference cache
def _sanitise(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")


def _stats_name(key: str, impl: str) -> str:
    """The file name of ``key``'s reference under ``impl``: in the cache and among the shipped ones."""
    if not key:
        raise ValueError("empty reference key")
    return f"{_sanitise(key)}__{_sanitise(impl)}.npz"


def _stats_path(key: str, cache_dir, impl: str) -> Path:
    return cache_dir_path(cache_dir) / "fid_stats" / _stats_name(key, impl)


SHIPPED_REFERENCE_DIR = Path(__file__).resolve().parent / "fid_reference"  # package data (pyproject.toml)


class ShippedReferenceError(ValueError):
    """A shipped reference file disagrees with its name or its record (one line)."""


def images_sha256(images: np.ndarray) -> str:
    """SHA-256 of uint8 NCHW images (shape and bytes): what a shipped reference was computed from."""
    a = np.ascontiguousarray(images)
    return hashlib.sha256(repr((a.dtype.str, a.shape)).encode() + a.tobytes()).hexdigest()


def features_sha256(feats: np.ndarray) -> str:
    """SHA-256 of float32 features' bytes: what a shipped reference records of its features."""
    return hashlib.sha256(np.ascontiguousarray(feats).tobytes()).hexdigest()


def shipped_reference_path(key: str, impl: str, shipped_dir: Path | None = None) -> Path:
    return (SHIPPED_REFERENCE_DIR if shipped_dir is None else Path(shipped_dir)) / _stats_name(key, impl)


def shipped_features(key: str, impl: str, images: np.ndarray | None,
                     shipped_dir: Path | None = None) -> np.ndarray | None:
    """The shipped features (float64) of ``key`` under ``impl`` for exactly ``images``, or None."""
    path = shipped_reference_path(key, impl, shipped_dir)
    if images is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            rec = {k: str(z[k]) for k in ("key", "fid_impl", "images_sha256", "feats_sha256")}
            feats = z["feats"]
    except (OSError, ValueError, KeyError) as e:
        raise ShippedReferenceError(f"shipped FID reference {path.name} cannot be read ({e}): a damaged install, "
                                    "reinstall") from e
    if rec["key"] != key or rec["fid_impl"] != impl:
        raise ShippedReferenceError(f"shipped FID reference {path.name} records key {rec['key']!r} and extractor "
                                    f"{rec['fid_impl']!r}, not its name's (rewrite it with scripts/ship_fid_reference.py)")
    if features_sha256(feats) != rec["feats_sha256"]:
        raise ShippedReferenceError(f"shipped FID reference {path} does not match its SHA-256 (a damaged install: "
                                    "reinstall)")
    if rec["images_sha256"] != images_sha256(images):
        return None  # other images under the same key: not what the file was computed from
    return feats.astype(np.float64)


def _reference_entry(key: str, images: np.ndarray | None, *, device="cpu", cache_dir=None,
                     extractor: str = "clean"):
    impl = get_extractor(extractor).impl
    path = _stats_path(key, cache_dir, impl)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["fid_impl"]) != impl:
                raise ValueError(f"{path} was written by {z['fid_impl']}, not {impl}")
            mu, sigma, feats = z["mu"], z["sigma"], z["feats"].astype(np.float64)
        if images is not None and np.asarray(images).shape[0] != feats.shape[0]:
            raise ValueError(
                f"cached reference {key!r} has n={feats.shape[0]} but {np.asarray(images).shape[0]} images "
                f"were passed; the key must encode n (delete {path} if it is stale)"
            )
        return mu, sigma, feats
    if images is None:
        raise ValueError(f"no cached reference stats for {key!r} and no images given")
    feats = shipped_features(key, impl, images)
    if feats is None:
        feats = inception_features(images, device=device, cache_dir=cache_dir, extractor=extractor)
    mu, sigma = feature_stats(feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # features are float32 network outputs, so float32 storage is lossless
            np.savez(f, mu=mu, sigma=sigma, feats=feats.astype(np.float32),
                     fid_impl=np.array(impl), key=np.array(key))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return mu, sigma, feats


def reference_stats(key: str, images: np.ndarray | None, *, device="cpu",
                    cache_dir=None, extractor: str = "clean") -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of real images, cached at ``<cache_dir>/fid_stats/<key>__<fid_impl>.npz``.

    ``key`` must identify (dataset, split, resolution, n); on a cache hit ``images`` are not
    read (may be None) beyond checking n.  Writes are atomic (tmp file + os.replace).
    """
    mu, sigma, _ = _reference_entry(key, images, device=device, cache_dir=cache_dir, extractor=extractor)
    return mu, sigma


# ----------------------------------------------------------------------------- FID
@dataclass(frozen=True)
class FIDResult:
    fid: float
    kid: float
    fid_impl: str
    n_real: int
    n_fake: int


def compute_fid(real: np.ndarray | None, fake: np.ndarray, *, device="cpu", real_key: str | None = None,
                cache_dir=None, extractor: str = "clean") -> FIDResult:
    """FID and KID between uint8 NCHW ``real`` and ``fake`` images.

    With ``real_key`` the real statistics and features come from :func:`reference_stats`'s
    cache (computed and stored on first use); ``real`` may then be None on a cache hit.
    """
    fake = check_images(fake, "fake")
    if real_key is not None:
        mu_r, sig_r, feats_r = _reference_entry(real_key, None if real is None else check_images(real, "real"),
                                                device=device, cache_dir=cache_dir, extractor=extractor)
    else:
        if real is None:
            raise ValueError("real images are required without real_key")
        feats_r = inception_features(check_images(real, "real"), device=device, cache_dir=cache_dir,
                                     extractor=extractor)
        mu_r, sig_r = feature_stats(feats_r)
    feats_f = inception_features(fake, device=device, cache_dir=cache_dir, extractor=extractor)
    mu_f, sig_f = feature_stats(feats_f)
    return FIDResult(
        fid=frechet_distance(mu_r, sig_r, mu_f, sig_f),
        kid=kid(feats_r, feats_f),
        fid_impl=get_extractor(extractor).impl,
        n_real=int(feats_r.shape[0]),
        n_fake=int(feats_f.shape[0]),
    )


FID_REFERENCE_SEED = 0  # fixed: the reference set is the same for every scenario and seed


def fid_reference(test, n: int) -> tuple[np.ndarray, str]:
    """Real images for FID: a fixed sample of the dataset's test split (never a member).

    The same images for every scenario and seed of a dataset, so their Inception statistics are
    computed once and cached. Returns the images and the cache key naming them.
    """
    rng = np.random.default_rng(FID_REFERENCE_SEED)
    idx = np.sort(rng.permutation(len(test.labels))[:n])
    res = test.images.shape[-1]
    key = f"{test.name.replace(':', '-')}-test-{res}px-n{len(idx)}-seed{FID_REFERENCE_SEED}"
    return test.images[idx], key


FID_FLOOR_SEED = 1  # which training images form the real-vs-real floor (fixed: the same for every model)


def floor_images(train, n: int) -> tuple[np.ndarray, str]:
    """The ``n`` training images of the FID floor (fixed by ``FID_FLOOR_SEED``) and their cache key."""
    if n > len(train.labels):
        raise ValueError(f"the FID floor at n = {n} needs {n} training images, {train.name} has {len(train.labels)}")
    idx = np.sort(np.random.default_rng(FID_FLOOR_SEED).permutation(len(train.labels))[:n])
    return train.images[idx], f"{train.name.replace(':', '-')}-train-{train.images.shape[-1]}px-n{n}-seed{FID_FLOOR_SEED}"


def fid_floor(train, test, n: int, *, device: str = "cpu", extractor: str = "clean",
              cache_dir=None) -> FIDResult:
    """The FID floor at ``n``: FID (and KID) of ``n`` real *training* images against the same
    ``n``-image test reference the rows are scored on (:func:`fid_reference`).

    FID is biased upwards at small n, so a row's FID means little without it: a model that
    generated real digits would score this, not 0. Both sides' features are cached by key, so the
    floor costs one Inception pass per (dataset, n) on a machine.
    """
    real, real_key = fid_reference(test, n)
    floor, floor_key = floor_images(train, n)
    mu_r, sig_r, feats_r = _reference_entry(real_key, real, device=device, cache_dir=cache_dir, extractor=extractor)
    mu_f, sig_f, feats_f = _reference_entry(floor_key, floor, device=device, cache_dir=cache_dir, extractor=extractor)
    return FIDResult(fid=frechet_distance(mu_r, sig_r, mu_f, sig_f), kid=kid(feats_r, feats_f),
                     fid_impl=get_extractor(extractor).impl, n_real=int(feats_r.shape[0]), n_fake=int(feats_f.shape[0]))
