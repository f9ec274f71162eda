"""The runner: ``run_one(scenario, seed, out_dir)`` -> one complete run folder.

A run folder is ``<out>/<suite>/<scenario>-<hash>/seed-<n>/`` and holds

    scenario.json     the scenario as run (its hash names the folder)
    partition.json    every client's member (train) and held-out indices
    history.json      per-round training loss and the partitions sampled each round
    global_model.pt   the final global model (a torch state dict)
    samples.npz       the generated images (uint8 NCHW) and their labels
    samples.png       a grid of generated samples
    metrics.json      utility, privacy and attack metrics (the leaderboard's columns)
    attacks.json, attack_scores.npz, roc.png, inversion.png
                      what the scenario's attacks recovered (only when it lists attacks;
                      see attacks.evaluate)
    environment.json  versions, git sha, device, date
    DONE              written last

The folder is built under a hidden ``.seed-<n>.partial-<pid>`` name and renamed into place in one
``os.replace``: a run folder either is complete or does not exist, so an interrupted suite
resumes by skipping the folders that exist (``--resume``), and a leaderboard is never built from a
half-written run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from benchmark.data import load_dataset
from benchmark.federation import task
from benchmark.federation.simulation import simulate
from benchmark.model import make_scheduler, sample
from benchmark.scenarios import Scenario

RUN_FILES = ("scenario.json", "partition.json", "history.json", "global_model.pt", "samples.npz",
             "samples.png", "metrics.json", "environment.json", "DONE")


class RunError(RuntimeError):
    """A run cannot start or finish (one-line message)."""


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    device: str = "cpu"
    data_root: str | None = None
    resume: bool = False
    progress: bool = True


def run_dir(out_dir: Path, scenario: Scenario, seed: int) -> Path:
    return Path(out_dir) / scenario.suite / f"{scenario.name}-{scenario.hash}" / f"seed-{seed}"


def is_complete(path: Path) -> bool:
    return all((path / f).exists() for f in RUN_FILES)


def resolve_device(device: str) -> str:
    """``auto`` -> cuda if present else cpu; a CUDA device asked for where there is none is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunError(f"device {device!r} requested but no CUDA GPU is available (use --device cpu)")
        idx = int(device.split(":", 1)[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise RunError(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
        return device
    if device != "cpu":
        raise RunError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)")
    return device


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see the old content or the new, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


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


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def environment(device: str) -> dict:
    if device.startswith("cuda"):
        dev_name = torch.cuda.get_device_name(torch.device(device))
    else:
        dev_name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "device_name": dev_name,
        **{d: _version(d) for d in ("torch", "opacus", "flwr", "diffusers", "clean-fid",
                                    "pytorch-fid", "feddp-bench")},
    }


def sample_grid_png(images: np.ndarray, path: Path, ncol: int = 10) -> None:
    """Tile uint8 NCHW images into one PNG."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = -(-n // ncol)
    grid = np.zeros((nrow * (h + 2) + 2, ncol * (w + 2) + 2, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncol)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = img.transpose(1, 2, 0)
    mode = "L" if c == 1 else "RGB"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(grid[..., 0] if c == 1 else grid, mode=mode).save(tmp, format="PNG")
    os.replace(tmp, path)


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


def privacy_metrics(scenario: Scenario, history: dict) -> dict:
    """The privacy columns of a run, from what the federation recorded."""
    if scenario.dp_mode == "none":
        return {"epsilon": None, "delta": None, "accountant": None, "noise_multiplier": None,
                "max_grad_norm": None, "sample_rate": None}
    if scenario.dp_mode == "central-dp":
        c = history["central_dp"]
        return {"epsilon": c["epsilon"], "delta": scenario.delta, "accountant": c["accountant"],
                "noise_multiplier": c["noise_multiplier"], "max_grad_norm": c["max_grad_norm"],
                "sample_rate": c["sample_rate"], "epsilon_target": scenario.target_epsilon}
    from privacy.dpsgd import DEFAULT_MAX_GRAD_NORM

    rounds = history["rounds"]
    return {
        # The largest spend of any client (clients hold disjoint data), after its last round.
        "epsilon": max(r["epsilon"] for r in rounds), "delta": scenario.delta,
        "accountant": f"opacus-{scenario.accountant}", "noise_multiplier": min(r["noise_multiplier"] for r in rounds),
        "max_grad_norm": scenario.max_grad_norm or DEFAULT_MAX_GRAD_NORM,
        "sample_rate": max(r["sample_rate"] for r in rounds), "epsilon_target": scenario.target_epsilon,
        "grad_sample_mode": scenario.grad_sample_mode, "noise_multiplicity": scenario.noise_multiplicity,
    }


def verify_before_dp(scenarios, opts: RunOptions) -> dict:
    """``bench verify-dp`` once per (model, input shape, mode) used by a local-DP scenario."""
    from privacy.verify import verify_dp

    reports = {}
    device = resolve_device(opts.device)
    for s in scenarios:
        if s.dp_mode != "local-dpsgd":
            continue
        ds = load_dataset(s.dataset, data_root=opts.data_root, split="test")
        c, r = ds.images.shape[1], ds.images.shape[2]
        key = (s.model, c, r, s.class_conditional, s.grad_sample_mode)
        if key in reports:
            continue
        rep = verify_dp(s.model, device=device, in_channels=c, resolution=r,
                        num_classes=ds.num_classes if s.class_conditional else None, modes=(s.grad_sample_mode,))
        if not rep.passed:
            raise RunError(f"per-sample gradients of {s.model} ({s.grad_sample_mode}) fail verification: "
                           + "; ".join(rep.modes[0].problems))
        reports[key] = rep
    return reports


def run_one(scenario: Scenario, seed: int, opts: RunOptions) -> Path:
    """Train, evaluate and record one (scenario, seed). Returns the complete run folder."""
    final = run_dir(opts.out_dir, scenario, seed)
    if final.exists():
        if is_complete(final) and opts.resume:
            return final
        if is_complete(final):
            raise RunError(f"run folder {final} exists; pass --resume to skip completed runs")
        shutil.rmtree(final)  # cannot happen through os.replace; a hand-made folder
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = final.parent / f".{final.name}.partial-{os.getpid()}"
    work.mkdir()

    try:
        return _run_in(work, final, scenario, seed, opts)
    except BaseException:
        # An ordinary failure leaves nothing behind (a kill -9 leaves the .partial folder, which
        # the next run of this (scenario, seed) removes).
        shutil.rmtree(work, ignore_errors=True)
        for empty in (final.parent, final.parent.parent):  # the scenario and suite folders, if empty
            try:
                empty.rmdir()
            except OSError:
                break
        raise


def _run_in(work: Path, final: Path, scenario: Scenario, seed: int, opts: RunOptions) -> Path:
    from benchmark.utility import compute_fid

    device = resolve_device(opts.device)
    fed = task.load_federated_data(scenario, seed, opts.data_root)
    write_json(work / "scenario.json", scenario.to_dict() | {"hash": scenario.hash, "seed": seed})
    write_json(work / "partition.json", fed.partition_record())

    bar = None
    if opts.progress:
        from tqdm import tqdm
        bar = tqdm(total=scenario.rounds, desc=f"{scenario.name} seed {seed}: rounds", unit="round",
                   leave=False, file=sys.stderr)
    run_config = {"scenario": scenario.to_json(), "seed": seed, "out-dir": str(work),
                  "device": device, "data-root": opts.data_root or ""}
    try:
        history = simulate(run_config, num_clients=scenario.num_clients,
                           gpu_fraction=(1.0 / scenario.clients_per_round) if device.startswith("cuda") else 0.0,
                           on_round=(lambda r: bar.update(1)) if bar else None)
    finally:
        if bar:
            bar.close()

    # Evaluate the final global model.
    model = task.build_model(scenario, fed.dataset)
    model.load_state_dict(torch.load(work / "global_model.pt", map_location="cpu", weights_only=True))
    model.to(device)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    fake, fake_labels = sample(
        model, make_scheduler(scenario.num_train_timesteps), scenario.fid_n_samples,
        steps=scenario.sample_steps, sampler=scenario.sampler,
        num_classes=fed.dataset.num_classes if scenario.class_conditional else None,
        seed=task.derive_seed("sample", seed), device=device,
    )
    sample_s = time.perf_counter() - t0
    np.savez_compressed(work / "samples.npz", images=fake, labels=fake_labels)
    sample_grid_png(fake[:100], work / "samples.png")

    test = load_dataset(scenario.dataset, data_root=opts.data_root, split="test")
    real, real_key = fid_reference(test, scenario.fid_n_samples)
    t0 = time.perf_counter()
    fid = compute_fid(real, fake, device=device, real_key=real_key, extractor=scenario.fid_impl)
    fid_s = time.perf_counter() - t0
    if not np.isfinite(fid.fid):
        raise RunError(f"{scenario.name} seed {seed}: FID is not finite ({fid.fid})")

    downstream = {}
    if scenario.class_conditional:
        from benchmark.utility import downstream_accuracy

        downstream = {
            "downstream_acc": downstream_accuracy(fake, fake_labels, test.images, test.labels,
                                                  num_classes=test.num_classes,
                                                  seed=task.derive_seed("downstream", seed), device=device),
            "downstream_n_train": len(fake), "downstream_n_test": len(test.labels),
        }

    privacy = privacy_metrics(scenario, history)
    attack_cols = {}
    if scenario.attacks:
        from attacks.evaluate import run_attacks

        t0 = time.perf_counter()
        attack_cols = run_attacks(scenario, seed, model, fed, privacy, work, device=device)
        attack_cols["attack_s"] = time.perf_counter() - t0

    metrics = {
        **downstream, **attack_cols,
        "fid": fid.fid, "kid": fid.kid, "fid_impl": fid.fid_impl, "fid_n_samples": fid.n_fake,
        "fid_n_real": fid.n_real, "fid_reference": real_key,
        "train_s": history["train_s"], "sample_s": sample_s, "fid_s": fid_s,
        "final_train_loss": history["rounds"][-1]["train_loss"],
        "dp_mode": scenario.dp_mode, **privacy,
    }
    write_json(work / "metrics.json", metrics)
    write_json(work / "environment.json", environment(device))
    write_atomic(work / "DONE", "")
    os.replace(work, final)
    return final


def failed_audits(paths) -> list[str]:
    """One loud line per completed run whose empirical epsilon lower bound exceeds its claim."""
    lines = []
    for path in paths:
        mfile = Path(path) / "metrics.json"
        if not mfile.exists():
            continue
        m = json.loads(mfile.read_text())
        if m.get("audit_failed"):
            lines.append(f"AUDIT FAILED: {path}: empirical epsilon lower bound {m['epsilon_empirical_lb']:.3g} "
                         f"(95 % confidence) exceeds the claimed epsilon {m['epsilon']:.3g}")
    return lines


def plan(scenarios: tuple[Scenario, ...], seeds: tuple[int, ...] | None,
         opts: RunOptions) -> list[tuple[Scenario, int, Path, bool]]:
    """Every (scenario, seed, folder, already complete) the suite will visit, checked up front."""
    out = []
    for s in scenarios:
        for seed in (seeds or s.seeds):
            path = run_dir(opts.out_dir, s, seed)
            done = is_complete(path)
            if done and not opts.resume:
                raise RunError(f"run folder {path} exists; pass --resume to skip completed runs "
                               f"or choose another --out")
            out.append((s, seed, path, done))
    return out


def check_fid_available(scenarios) -> None:
    """Fail before any training when a scenario's FID network is not installed."""
    from benchmark.utility import ensure_inception_file, pytorch_fid_extractor

    for impl in sorted({s.fid_impl for s in scenarios}):
        if impl == "clean":
            ensure_inception_file()
        else:
            pytorch_fid_extractor("cpu")


def check_data(work, opts: RunOptions) -> None:
    """Fail before any training (and before any folder is made) when a scenario cannot run on its
    data: missing or corrupt dataset files (train and test split), more clients than images, or a
    sample-level ``delta`` not below 1/n for some client's n training images."""
    loaded: dict[tuple[str, str], object] = {}

    def split(name: str, which: str):
        if (name, which) not in loaded:
            loaded[name, which] = load_dataset(name, data_root=opts.data_root, split=which)
        return loaded[name, which]

    for scenario, seed, _path, done in work:
        if done:
            continue
        split(scenario.dataset, "test")
        fed = task.load_federated_data(scenario, seed, opts.data_root, dataset=split(scenario.dataset, "train"))
        if scenario.dp_mode == "local-dpsgd":
            n = max(len(c.train_idx) for c in fed.partition.clients)
            if scenario.delta >= 1 / n:
                raise RunError(f"scenario {scenario.name!r}: sample-level delta={scenario.delta:g} must be "
                               f"below 1/n = {1 / n:g} (a client holds n = {n} training images)")


def check_writable(out_dir: Path) -> None:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"output folder {out_dir} is not writable ({e.strerror or e})") from None
