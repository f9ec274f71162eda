"""The run folder: its layout, its completeness, atomic writes and provenance.

A leaf module (standard library and numpy only; torch, Pillow and matplotlib are imported where a
function needs them), so that everything that writes or reads run folders and results (runner, attacks,
leaderboard, report, sampler-cost) imports it without importing each other.

A run folder is ``<out>/<suite>/<scenario>-<hash>/seed-<n>/`` and holds

    scenario.json     the scenario as run (its hash names the folder)
    partition.json    every client's member (train) and held-out indices
    history.json      the partitions sampled each round, per-round training loss (none under DP)
                      and the mechanism's ``privacy`` record (its figures and guarantees)
    global_model.pt   the final global model (a torch state dict)
    samples.npz       the generated images (uint8 NCHW) and their labels
    samples.png       a grid of generated samples
    metrics.json      utility, privacy and attack metrics (the leaderboard's columns)
    attacks.json, attack_scores.npz, roc.png, inversion.png
                      what the scenario's attacks recovered (only when it lists attacks;
                      see attacks.evaluate)
    environment.json  versions, git sha, device, date
    DONE              written last

Every file is written through :func:`write_atomic` (a reader sees the old content or the new,
never a torn file), and the folder itself is built under a hidden name and renamed into place
(:mod:`benchmark.runner`), so a run folder either is complete or does not exist.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

RUN_FILES = ("scenario.json", "partition.json", "history.json", "global_model.pt", "samples.npz",
             "samples.png", "metrics.json", "environment.json", "DONE")


def run_dir(out_dir: Path, scenario, seed: int) -> Path:
    """Where the run of ``(scenario, seed)`` lives under ``out_dir``."""
    return Path(out_dir) / scenario.suite / f"{scenario.name}-{scenario.hash}" / f"seed-{seed}"


def is_complete(path: Path) -> bool:
    return all((Path(path) / f).exists() for f in RUN_FILES)


# Atomic writes: the one idiom -----------------------------------------------------------------------
def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see the old content or the new, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish_run_files(runs: dict, dest: Path, filename: str) -> list[Path]:
    """``dest/<scenario>-<hash><suffix>``: the file ``filename`` of each scenario definition's lowest
    seed (``runs``: (scenario, hash) -> its run folders by seed), where that run has one. Files in
    ``dest`` that no definition gives any more (a changed hash, a row gone) are removed, and
    ``dest`` itself when it is left empty."""
    dest, suffix = Path(dest), Path(filename).suffix
    out = []
    for (name, h), paths in sorted(runs.items()):
        src = paths[0] / filename
        if src.exists():
            target = dest / f"{name}-{h}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, src.read_bytes())
            out.append(target)
    for stale in set(dest.glob(f"*{suffix}")) - set(out):
        stale.unlink(missing_ok=True)
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    return out


def json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed``, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_atomic(path, buf.getvalue())


def write_torch(path: Path, obj) -> None:
    """``torch.save``, atomically (a state dict, e.g. ``global_model.pt``)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


# PNG: the one writer of every figure and image grid ------------------------------------------------
# The same figure or pixels give the same bytes: matplotlib's 'Software' stamp (its version) is left
# out, and Pillow writes no text chunk unless asked. Both go through write_atomic.
def write_png(path: Path, fig, **savefig_kw) -> Path:
    """A matplotlib figure as PNG (``savefig_kw``: dpi, bbox_inches, ...); the figure is closed after."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, **savefig_kw)
    plt.close(fig)
    return _write_png_bytes(path, buf.getvalue())


def write_png_pixels(path: Path, pixels: np.ndarray) -> Path:
    """uint8 pixels as PNG: (H, W) grayscale or (H, W, 3) RGB."""
    from PIL import Image

    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(f"PNG pixels must be uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return _write_png_bytes(path, buf.getvalue())


def _write_png_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return path


def sample_grid_png(images: np.ndarray, path: Path, ncol: int = 10) -> None:
    """Tile uint8 NCHW images into one PNG. Images smaller than 16 px are blown up (nearest
    neighbour) to 32 px or more, so that an 8x8 digit can be judged by eye."""
    up = max(1, 32 // max(images.shape[2], 1)) if images.shape[2] < 16 else 1
    if up > 1:
        images = images.repeat(up, axis=2).repeat(up, axis=3)
    n, c, h, w = images.shape
    nrow = -(-n // ncol)
    grid = np.zeros((nrow * (h + 2) + 2, ncol * (w + 2) + 2, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncol)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = img.transpose(1, 2, 0)
    write_png_pixels(path, grid[..., 0] if c == 1 else grid)


# Provenance -------------------------------------------------------------------------------------------
def git_sha() -> str:
    """The commit of the checkout the package runs from, or 'unknown' (e.g. a wheel install)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    if out.returncode != 0 or not sha:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    """What ``environment.json`` records: date, git sha, versions, device."""
    import torch

    if device.startswith("cuda"):
        dev_name = torch.cuda.get_device_name(torch.device(device))
    else:
        dev_name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {
        # Which CPU kernels torch dispatched to, and the CPU: two machines of one kind but another
        # ISA level compute the same run to other last bits (a no-DP row's FID then differs).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "device_name": dev_name,
        **{d: package_version(d) for d in ("torch", "opacus", "flwr", "diffusers", "clean-fid",
                                           "pytorch-fid", "feddp-bench")},
    }
