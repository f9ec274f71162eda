"""Where derived files are cached on a machine (the FID network file and reference statistics,
public pretraining checkpoints): one directory, chosen by ``$FEDDP_CACHE``. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$FEDDP_CACHE``, else ``~/.cache/feddp-bench``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FEDDP_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "feddp-bench"
