"""Your own images: the dataset ``folder:PATH`` (issue 27).

Two layouts, as torchvision's ``ImageFolder`` and Hugging Face's ``imagefolder`` read them, the
second with one more level for a natural partition (LEAF/FEMNIST's: each party its own site):

- ``PATH/<class>/<image>``: one folder per class;
- ``PATH/<site>/<class>/<image>``: one folder per site (hospital, scanner, writer), each with one
  folder per class. The ``by-site`` partition (:mod:`benchmark.partition`) makes each site one party.

Images: PNG, JPEG, BMP or TIFF (:data:`IMAGE_SUFFIXES`, any case); other files and hidden entries
are ignored, as ``ImageFolder`` ignores them. Grayscale (``L``, ``LA``, 16-bit, float) or colour
(``RGB``, ``RGBA``, palette, ``CMYK``); alpha is dropped; 16-bit grey is scaled from 0..65535 to
0..255 (one scale for every image, so intensities stay comparable), float grey from 0..1. Classes are the sorted union of the class
folder names (over the sites): label ``i`` is the ``i``-th name. A site need not hold every class
(label skew between hospitals is the natural case); the union keeps the labels the same at every
site, and a class-conditional model learns every class some site holds.

Brought to the scenario's ``image_size`` (square: the central square crop, then a bicubic resize;
torchvision's ``Resize`` + ``CenterCrop``) and ``channels`` (1: luminance, 3: RGB). Unset, they are
the images' own, which must then agree (all one square size; all grey or all colour): otherwise
the load is refused in one line naming two files that disagree.

Split: a fixed, seeded, stratified 80/20 train/test split within every (site, class) cell
(:data:`FOLDER_SPLIT_SEED`), so the test split (the FID reference and the downstream test set) has
every site's and every class's share and is never given to a party. The split is recorded: the
cached manifest lists every file with its split, site and label, and a run records the dataset's
content hash (``ImageDataset.content_hash``).

Cache: the first load reads every file's bytes once to hash the folder's content (paths and bytes;
sha256), decodes, and stores a compact ``.npz`` with its manifest under ``$FEDDP_CACHE/folders``;
a later load with the same content and the same size and channels reads the cache and decodes
nothing. A changed file is a new hash, so a cache is never stale.

Bad input, each refused in one line naming the file or folder (:class:`DatasetError`), before any
training: a path that does not exist or is not a folder; no class folders; a folder that mixes
images and sub-folders; an empty class or site; an unreadable or truncated image; mixed sizes or
channel counts with no ``image_size`` / ``channels`` to bring them to one (:class:`FolderDataError`,
which ``load_dataset`` raises as its ``DatasetError``).

Private by default: a folder dataset is someone's own images, and results never publish them
(``benchmark.data.is_public``).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TEST_FRACTION = 0.2
FOLDER_SPLIT_SEED = 20261207  # fixed forever: changing it changes every folder dataset's split
CACHE_FORMAT = 1              # bump when the cached arrays or their manifest change meaning
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class FolderDataError(ValueError):
    """A folder dataset cannot be read as asked (one line); :func:`benchmark.data.load_dataset`
    raises it as its ``DatasetError``."""


def _error(msg: str) -> FolderDataError:
    return FolderDataError(msg)


@dataclass(frozen=True)
class FolderLayout:
    """What a folder holds, before any image is decoded."""

    root: Path
    sites: tuple[str, ...]                 # () for PATH/<class>/<image>
    classes: tuple[str, ...]               # sorted union over the sites
    files: tuple[tuple[int, int, str], ...]  # (site index or -1, label, path relative to root), sorted

    @property
    def by_site(self) -> bool:
        return bool(self.sites)


def _visible(entries) -> list[Path]:
    return sorted((p for p in entries if not p.name.startswith(".")), key=lambda p: p.name)


def _images_in(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, sub-folders) directly in ``folder``."""
    entries = _visible(folder.iterdir())
    return ([p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES],
            [p for p in entries if p.is_dir()])


def scan(path: str | os.PathLike, name: str | None = None) -> FolderLayout:
    """The layout of ``path`` (module docstring), or one-line :class:`DatasetError`."""
    root = Path(path).expanduser()
    label = name or f"{FOLDER_PREFIX}{path}"
    if not root.exists():
        raise _error(f"dataset {label!r}: {root} does not exist")
    if not root.is_dir():
        raise _error(f"dataset {label!r}: {root} is not a folder (expected PATH/<class>/<image> or "
                     "PATH/<site>/<class>/<image>)")
    top_images, top = _images_in(root)
    if not top:
        raise _error(f"dataset {label!r}: {root} has no class folders (expected PATH/<class>/<image> or "
                     "PATH/<site>/<class>/<image>)")
    if top_images:
        raise _error(f"dataset {label!r}: {root} mixes images ({top_images[0].name}) with folders: images go "
                     "in PATH/<class>/ or PATH/<site>/<class>/")
    inner = {d: _images_in(d) for d in top}
    nested = [d for d, (_imgs, subs) in inner.items() if subs]
    if nested and len(nested) != len(top):
        flat = next(d for d in top if d not in nested)
        raise _error(f"dataset {label!r}: {nested[0]} holds folders but {flat} does not: use one layout, "
                     "PATH/<class>/<image> or PATH/<site>/<class>/<image>")
    if not nested:  # PATH/<class>/<image>
        cells = {(None, d.name): inner[d][0] for d in top}
        sites: tuple[str, ...] = ()
    else:
        cells = {}
        for site in top:
            imgs, classes = inner[site]
            if imgs:
                raise _error(f"dataset {label!r}: {site} mixes images ({imgs[0].name}) with class folders")
            for c in classes:
                c_imgs, deeper = _images_in(c)
                if deeper:
                    raise _error(f"dataset {label!r}: {deeper[0]} is one folder too deep (expected "
                                 "PATH/<site>/<class>/<image>)")
                cells[(site.name, c.name)] = c_imgs
        sites = tuple(d.name for d in top)
    for (site, cls), imgs in cells.items():
        if not imgs:
            where = root / cls if site is None else root / site / cls
            raise _error(f"dataset {label!r}: class folder {where} holds no image "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    classes = tuple(sorted({cls for _site, cls in cells}))
    index = {c: i for i, c in enumerate(classes)}
    files = tuple(sorted((sites.index(site) if site is not None else -1, index[cls], str(p.relative_to(root)))
                         for (site, cls), imgs in cells.items() for p in imgs))
    return FolderLayout(root, sites, classes, files)


_HASHES: dict[tuple, str] = {}  # (root, every file's path, size and mtime) -> its content hash, this process


def content_hash(layout: FolderLayout) -> str:
    """sha256 of the folder's content: every file's relative path and bytes, in sorted order. Once
    per process for an unchanged folder (a run loads its data several times): memoised on every
    file's size and modification time."""
    stats = tuple((rel, *(lambda st: (st.st_size, st.st_mtime_ns))((layout.root / rel).stat()))
                  for _s, _l, rel in layout.files)
    key = (str(layout.root.resolve()), stats)
    if key not in _HASHES:
        _HASHES[key] = _hash_files(layout)
    return _HASHES[key]


def _hash_files(layout: FolderLayout) -> str:
    h = hashlib.sha256(f"feddp-folder-{CACHE_FORMAT}".encode())
    for _site, _label, rel in sorted(layout.files, key=lambda f: f[2]):
        h.update(rel.encode() + b"\0")
        h.update((layout.root / rel).read_bytes())
    return h.hexdigest()


def _unreadable(path: Path, label: str, e: BaseException):
    msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
    return _error(f"dataset {label!r}: cannot read image {path} ({msg})")


_PIL_ERRORS = (OSError, ValueError, SyntaxError)  # UnidentifiedImageError is an OSError


def _header(path: Path, label: str) -> tuple[tuple[int, int], str]:
    """(size, mode) from the file's header, without decoding its pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (*_PIL_ERRORS, Image.DecompressionBombError) as e:
        raise _unreadable(path, label, e) from None


def _decode(path: Path, label: str):
    """One image as a PIL image, fully read (a truncated file fails here, not later)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (*_PIL_ERRORS, Image.DecompressionBombError) as e:
        raise _unreadable(path, label, e) from None


def _channels_of(mode: str) -> int:
    return 1 if mode in _GREY_MODES else 3


def _to_array(im, channels: int, size: int) -> np.ndarray:
    from PIL import Image

    if im.mode.startswith("I"):  # 16-bit grey (PIL reads 16-bit PNG and TIFF as I or I;16): 0..65535 to 0..255
        a = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":  # float grey has no fixed range: 0..1 is taken as the range (values outside clip)
        a = np.asarray(im, dtype=np.float64) * 255.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    im = im.convert("L" if channels == 1 else "RGB")
    w, h = im.size
    if (w, h) != (size, size):
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _split(sites: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True for the test images: TEST_FRACTION of every (site, class) cell, seeded (a cell of one
    image stays in train)."""
    rng = np.random.default_rng(FOLDER_SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for cell in sorted(set(zip(sites.tolist(), labels.tolist()))):
        idx = np.flatnonzero((sites == cell[0]) & (labels == cell[1]))
        test[rng.permutation(idx)[: int(round(len(idx) * TEST_FRACTION))]] = True
    return test


@dataclass(frozen=True)
class FolderData:
    """A folder dataset decoded: every image (both splits), with its manifest."""

    images: np.ndarray      # uint8 (N, C, S, S)
    labels: np.ndarray      # int64 (N,)
    sites: np.ndarray       # int64 (N,), -1 without sites
    test: np.ndarray        # bool (N,)
    classes: tuple[str, ...]
    site_names: tuple[str, ...]
    content_hash: str


def _cache_file(cache_dir: Path, digest: str, size: int | None, channels: int | None) -> Path:
    return cache_dir / "folders" / f"{digest[:24]}-s{size or 'own'}-c{channels or 'own'}.npz"


def load_folder(path: str | os.PathLike, *, image_size: int | None = None, channels: int | None = None,
                cache_dir: str | os.PathLike | None = None) -> FolderData:
    """Scan, hash, decode (or read the cache) and split ``path`` (module docstring)."""
    from benchmark.cache import cache_dir_path

    label = f"{FOLDER_PREFIX}{path}"
    if image_size is not None and image_size < 1:
        raise _error(f"dataset {label!r}: image_size must be >= 1, got {image_size}")
    if channels not in (None, 1, 3):
        raise _error(f"dataset {label!r}: channels must be 1 or 3, got {channels}")
    layout = scan(path, label)
    digest = content_hash(layout)
    cached = _cache_file(cache_dir_path(cache_dir), digest, image_size, channels)
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                meta = json.loads(str(z["manifest"]))
                return FolderData(z["images"], z["labels"], z["sites"], z["test"], tuple(meta["classes"]),
                                  tuple(meta["sites"]), digest)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable cache: decode again and rewrite it
    # Headers first (sizes and modes, no pixels), so that mixed shapes are refused before anything is
    # decoded; then one image at a time, each brought to (c, size, size) at once (a folder of large
    # scans never sits in memory at full size).
    heads = [(*_header(layout.root / rel, label), rel) for _site, _label, rel in layout.files]
    own_channels = {_channels_of(mode) for _size, mode, _rel in heads}
    if channels is None and len(own_channels) > 1:
        grey = next(rel for _s, mode, rel in heads if _channels_of(mode) == 1)
        colour = next(rel for _s, mode, rel in heads if _channels_of(mode) == 3)
        raise _error(f"dataset {label!r}: mixed channel counts ({grey} is grayscale, {colour} is colour): set the "
                     "scenario's channels = 1 or 3")
    c = channels or own_channels.pop()
    if image_size is None:
        sizes = {size for size, _mode, _rel in heads}
        if len(sizes) > 1:
            first = heads[0]
            other = next(h for h in heads if h[0] != first[0])
            raise _error(f"dataset {label!r}: images of different sizes ({first[2]} is {first[0][0]}x"
                         f"{first[0][1]}, {other[2]} is {other[0][0]}x{other[0][1]}): set the scenario's image_size")
        (w, h), = sizes
        if w != h:
            raise _error(f"dataset {label!r}: the images are {w}x{h}, not square: set the scenario's image_size "
                         "(a central square crop, then a resize)")
        size = w
    else:
        size = image_size
    images = np.stack([_to_array(_decode(layout.root / rel, label), c, size) for _s, _l, rel in layout.files])
    labels = np.array([lab for _s, lab, _r in layout.files], dtype=np.int64)
    sites = np.array([s for s, _l, _r in layout.files], dtype=np.int64)
    test = _split(sites, labels)
    manifest = {"format": CACHE_FORMAT, "content_sha256": digest, "classes": list(layout.classes),
                "sites": list(layout.sites), "image_size": size, "channels": c,
                "files": [{"path": rel, "site": s, "label": lab, "split": "test" if t else "train"}
                          for (s, lab, rel), t in zip(layout.files, test.tolist())]}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, images=images, labels=labels, sites=sites, test=test,
                        manifest=np.array(json.dumps(manifest)))
    os.replace(tmp, cached)
    return FolderData(images, labels, sites, test, layout.classes, layout.sites, digest)
