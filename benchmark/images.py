"""Image arrays as the metrics take them (uint8 NCHW) and image files as ``bench fid`` reads them.

Numpy only (Pillow where files are read), so that the metrics share one check of their input.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ImageLoadError(ValueError):
    """An image folder or array file cannot be read as images (one-line message)."""


def check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """``images`` as a uint8 (N, C, H, W) array with C in {1, 3}, or a ValueError naming ``name``."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in [0, 255], got {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be (N, C, H, W) with C in {{1, 3}}, got shape {images.shape}")
    return images


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
