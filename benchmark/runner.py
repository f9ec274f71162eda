"""The runner: ``run_one(scenario, seed, opts)`` -> one complete run folder (see
:mod:`benchmark.rundir` for what it holds).

The folder is built under a hidden ``.seed-<n>.partial-<pid>`` name and renamed into place in one
``os.replace``: a run folder either is complete or does not exist, so an interrupted suite
resumes by skipping the folders that exist (``--resume``), and a leaderboard is never built from a
half-written run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from benchmark.data import is_folder, scenario_dataset
from benchmark.devices import resolve_device  # noqa: F401  (re-exported for callers of the runner)
from benchmark import errors
from benchmark.federation import task
from benchmark.federation.partition_files import load_federated_data
from benchmark.federation.simulation import simulate
from benchmark.model import count_parameters, make_scheduler, sample
from benchmark.model_configs import model_identity
from benchmark.progress import Progress, round_line
from benchmark.rundir import (environment, is_complete, run_dir, sample_grid_png, write_atomic, write_json, write_torch,
                              write_npz)
from benchmark.scenarios import Scenario
from benchmark.schema import check_metrics
from benchmark.seeding import derive_seed
from privacy.mechanisms import get_mechanism


class RunError(ValueError):
    """A run cannot start as asked: bad input found before any training (one-line message)."""


class RunFailedError(RuntimeError):
    """A run started but could not finish (one-line message)."""


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    device: str = "cpu"
    data_root: str | None = None
    resume: bool = False
    progress: bool = True                          # tqdm bars (rounds; bench run: on a TTY only)
    report: Callable[[str], None] | None = None    # one line as each stage of a run starts
    ray_address: str | None = None                 # an existing Ray cluster for the federations (None: a local one)


def privacy_metrics(scenario: Scenario, history: dict) -> dict:
    """The privacy columns of a run, from the ``privacy`` record the federation's server wrote."""
    return get_mechanism(scenario.dp_mode).columns(scenario, history["privacy"])


def verify_before_dp(scenarios, opts: RunOptions) -> dict:
    """Each scenario's mechanism's checks before any training (``bench verify-dp`` for DP-SGD),
    each done once per suite; returns one line per check that passed."""
    done: dict = {}
    device = resolve_device(opts.device)
    for s in scenarios:
        get_mechanism(s.dp_mode).preflight(
            s, test_split=lambda s=s: scenario_dataset(s, "test", opts.data_root),
            device=device, done=done)
    return done


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
    except BaseException as e:
        # An ordinary failure leaves nothing behind (a kill -9 leaves the .partial folder, which
        # the next run of this (scenario, seed) removes).
        shutil.rmtree(work, ignore_errors=True)
        for empty in (final.parent, final.parent.parent):  # the scenario and suite folders, if empty
            try:
                empty.rmdir()
            except OSError:
                break
        if isinstance(e, ValueError) and errors.is_ours(e):
            # Bad input is refused before any run starts (pre-flight, exit 2); one of our checks
            # that fires inside a run means the work failed (exit 4), not that the input was bad.
            raise RunFailedError(f"{scenario.name} seed {seed}: {errors.one_line(e)}") from e
        raise


def _run_in(work: Path, final: Path, scenario: Scenario, seed: int, opts: RunOptions) -> Path:
    progress = Progress(opts.report, f"{scenario.name} seed {seed}")
    try:
        return _run_stages(work, final, scenario, seed, opts, progress)
    finally:
        progress.close()


def _run_stages(work: Path, final: Path, scenario: Scenario, seed: int, opts: RunOptions,
                progress: Progress) -> Path:
    device = resolve_device(opts.device)
    stage = progress.enter

    fed = load_federated_data(scenario, seed, opts.data_root)
    write_json(work / "scenario.json", scenario.to_dict() | {"hash": scenario.hash, "seed": seed})
    write_json(work / "partition.json", fed.partition_record())

    stage("train", f"{scenario.rounds} round(s), {scenario.clients_per_round} of {scenario.num_clients} clients, "
                   f"dp {scenario.dp_mode}")
    history = train_stage(scenario, seed, work, fed, device, opts, progress)
    stage("sample", f"{n_generated(scenario)} images, {scenario.sampler}-{scenario.sample_steps}")
    model, fake, fake_labels, sample_s = sample_stage(scenario, seed, work, fed, device)
    stage("score", f"FID/KID at n = {scenario.fid_n_samples}"
                   + (", downstream accuracy" if scenario.class_conditional else ""))
    utility = score_stage(scenario, seed, fake, fake_labels, device, opts)
    privacy = privacy_metrics(scenario, history)
    attack_cols = {}
    if scenario.attacks:
        stage("attack", ", ".join(scenario.attacks))
        canaries = get_mechanism(scenario.dp_mode).audit_canaries(scenario, history["privacy"], seed)
        attack_cols = attack_stage(scenario, seed, model, fed, privacy, work, device, canaries)
    stage("record", "metrics.json, environment.json")
    metrics = {
        **utility, **attack_cols,
        "train_s": history["train_s"], "sample_s": sample_s, "model_params": count_parameters(model),
        "model_config": model_identity(scenario.model),
        "final_train_loss": (history["rounds"] or [{}])[-1].get("train_loss"),  # None under DP: clients keep it
        "dp_mode": scenario.dp_mode, **privacy,
    }
    check_metrics(metrics, where=f"{scenario.name} seed {seed}: metrics.json")
    return record_stage(work, final, metrics, device)


def train_stage(scenario: Scenario, seed: int, work: Path, fed, device: str, opts: RunOptions,
                progress: Progress | None = None) -> dict:
    """Federated training in Flower's simulation engine; writes global_model.pt and history.json.
    A line per finished round (``round_line``), and a tqdm bar where ``opts.progress`` (a TTY)."""
    bar = None
    if opts.progress:
        from tqdm import tqdm
        bar = tqdm(total=scenario.rounds, desc=f"{scenario.name} seed {seed}: rounds", unit="round",
                   leave=False, file=sys.stderr)
    t0 = time.monotonic()

    def on_round(r: int, metrics: dict) -> None:
        if bar is not None:
            bar.update(1)
        if progress is not None:
            elapsed = time.monotonic() - t0
            try:
                line = round_line(scenario, r, metrics, elapsed)
            except Exception:  # noqa: BLE001 - a progress line never fails a run
                line = f"round {r}/{scenario.rounds} done ({elapsed:.0f} s)"
            progress.say(line)

    run_config = {"scenario": scenario.to_json(), "seed": seed, "out-dir": str(work),
                  "device": device, "data-root": opts.data_root or ""}
    try:  # the bar is closed however the stage ends (a failed pretraining included)
        if scenario.pretrain:
            from benchmark.pretrain import pretrained_state

            ckpt = pretrained_state(scenario, fed.dataset.images.shape[1:], fed.dataset.num_classes,
                                    data_root=opts.data_root, device=device,
                                    say=progress.say if progress is not None else None)
            if scenario.rounds == 0:  # public-only: the checkpoint is the model, no private image seen
                write_torch(work / "global_model.pt", torch.load(ckpt, map_location="cpu", weights_only=True))
                history = {"train_s": 0.0, "privacy": get_mechanism(scenario.dp_mode).record(scenario, {}), "pretrained": ckpt.name,
                    "rounds": []}
                write_json(work / "history.json", history)
                return history
            run_config["init-weights"] = str(ckpt)
        return simulate(run_config, num_clients=scenario.num_clients,
                        gpu_fraction=(1.0 / scenario.clients_per_round) if device.startswith("cuda") else 0.0,
                        on_round=on_round, fed=fed, ray_address=opts.ray_address)
    finally:
        if bar:
            bar.close()


def n_generated(scenario: Scenario) -> int:
    """Images a run generates: FID's ``fid_n_samples``, or the downstream classifier's larger set
    (FID scores the first ``fid_n_samples``; labels go round-robin, so both are class-balanced)."""
    return max(scenario.fid_n_samples, scenario.downstream_n_samples or 0)


def sample_stage(scenario: Scenario, seed: int, work: Path, fed, device: str):
    """The final global model, and the images it generates (samples.npz, samples.png)."""
    model = task.build_model(scenario, fed.dataset)
    model.load_state_dict(torch.load(work / "global_model.pt", map_location="cpu", weights_only=True))
    model.to(device)
    t0 = time.perf_counter()
    fake, fake_labels = sample(
        model, make_scheduler(scenario.num_train_timesteps), n_generated(scenario),
        steps=scenario.sample_steps, sampler=scenario.sampler,
        num_classes=fed.dataset.num_classes if scenario.class_conditional else None,
        seed=derive_seed("sample", seed), device=device,
    )
    sample_s = time.perf_counter() - t0
    write_npz(work / "samples.npz", images=fake, labels=fake_labels)
    sample_grid_png(fake[:100], work / "samples.png")
    return model, fake, fake_labels, sample_s


def score_stage(scenario: Scenario, seed: int, fake: np.ndarray, fake_labels: np.ndarray, device: str,
                opts: RunOptions) -> dict:
    """Utility: FID and KID against the test split's fixed reference, downstream accuracy."""
    from benchmark.fid import compute_fid, fid_floor, fid_reference

    test = scenario_dataset(scenario, "test", opts.data_root)
    real, real_key = fid_reference(test, scenario.fid_n_samples)
    t0 = time.perf_counter()
    fid = compute_fid(real, fake[:scenario.fid_n_samples], device=device, real_key=real_key, extractor=scenario.fid_impl)
    fid_s = time.perf_counter() - t0
    if not np.isfinite(fid.fid):
        raise RunFailedError(f"{scenario.name} seed {seed}: FID is not finite ({fid.fid})")
    out = {"fid": fid.fid, "kid": fid.kid, "fid_impl": fid.fid_impl, "fid_n_samples": fid.n_fake,
           "fid_n_real": fid.n_real, "fid_reference": real_key, "fid_s": fid_s}
    train = scenario_dataset(scenario, "train", opts.data_root)
    if scenario.fid_n_samples <= len(train.labels):  # real training images against the same reference
        floor = fid_floor(train, test, scenario.fid_n_samples, device=device, extractor=scenario.fid_impl)
        out |= {"fid_floor": floor.fid, "kid_floor": floor.kid}
    if scenario.class_conditional:
        from benchmark.downstream import downstream_accuracy

        n = scenario.downstream_n_samples or scenario.fid_n_samples
        fake, fake_labels = fake[:n], fake_labels[:n]
        t0 = time.perf_counter()
        acc = downstream_accuracy(fake, fake_labels, test.images, test.labels, num_classes=test.num_classes,
                                  seed=derive_seed("downstream", seed), device=device)
        out |= {"downstream_acc": acc, "downstream_n_train": len(fake), "downstream_n_test": len(test.labels),
                "downstream_s": time.perf_counter() - t0}
    return out


def attack_stage(scenario: Scenario, seed: int, model, fed, privacy: dict, work: Path, device: str,
                 canaries: list = ()) -> dict:
    """The scenario's attacks on the finished run (attacks.evaluate is the referee); ``canaries``: the
    white-box canaries the mechanism planted (audited with the attacks' canaries)."""
    from attacks.evaluate import run_attacks

    t0 = time.perf_counter()
    cols = run_attacks(scenario, seed, model, fed, privacy, work, device=device, audit_canaries=canaries)
    cols["attack_s"] = time.perf_counter() - t0
    return cols


def record_stage(work: Path, final: Path, metrics: dict, device: str) -> Path:
    """metrics.json, environment.json and DONE; then the folder is renamed into place."""
    write_json(work / "metrics.json", metrics)
    write_json(work / "environment.json", environment(device))
    write_atomic(work / "DONE", "")
    os.replace(work, final)
    return final


class PlannedRun(NamedTuple):
    scenario: Scenario
    seed: int
    path: Path      # the run folder
    done: bool      # already complete


def plan(scenarios: tuple[Scenario, ...], seeds: tuple[int, ...] | None, opts: RunOptions) -> list[PlannedRun]:
    """Every run the suite will visit, checked up front."""
    out = []
    for s in scenarios:
        for seed in (seeds or s.seeds):
            path = run_dir(opts.out_dir, s, seed)
            done = is_complete(path)
            if done and not opts.resume:
                raise RunError(f"run folder {path} exists; pass --resume to skip completed runs "
                               f"or choose another --out")
            out.append(PlannedRun(s, seed, path, done))
    return out


def shard(work: list[PlannedRun], k: int, n: int) -> list[PlannedRun]:
    """Shard ``k`` of ``n`` (1-based) of a plan: its runs dealt round-robin in plan order (run i goes
    to shard i mod n + 1), so the n shards are disjoint, together the whole plan, and each gets a
    share of every scenario's seeds. The plan's order is stable (:func:`plan`: scenarios in suite
    order, each scenario's seeds), so every machine computes the same shards."""
    if not 1 <= k <= n:
        raise RunError(f"shard {k}/{n}: expected 1 <= K <= N")
    return [w for i, w in enumerate(work) if i % n == k - 1]


def check_fid_available(scenarios) -> None:
    """Fail before any training when a scenario's FID network is not installed."""
    from benchmark.fid_extractors import get_extractor
    from benchmark.inception import FIDUnavailableError

    for name in sorted({s.fid_impl for s in scenarios}):
        try:
            get_extractor(name).check()
        except FIDUnavailableError as e:
            raise RunError(str(e).splitlines()[0]) from e


def check_data(work, opts: RunOptions) -> None:
    """Fail before any training (and before any folder is made) when a scenario cannot run on its
    data: missing or corrupt dataset files (train and test split), more clients than images, or a
    sample-level ``delta`` not below 1/n for some client's n training images."""
    loaded: dict[tuple[str, str], object] = {}

    def split(scenario, which: str):
        key = (scenario.dataset, scenario.image_size, scenario.channels, which)
        if key not in loaded:
            loaded[key] = scenario_dataset(scenario, which, opts.data_root)
        return loaded[key]

    for scenario, seed, path, done in work:
        if done:
            _check_resumed(scenario, Path(path), lambda: split(scenario, "train").content_hash)
            continue
        split(scenario, "test")
        fed = load_federated_data(scenario, seed, opts.data_root, dataset=split(scenario, "train"))
        model_problem = _model_problem(scenario, fed.dataset)
        if model_problem:
            raise RunError(f"scenario {scenario.name!r}: {model_problem}")
        problem = get_mechanism(scenario.dp_mode).data_problem(scenario, [len(c.train_idx)
                                                                         for c in fed.partition.clients])
        if problem:
            raise RunError(f"scenario {scenario.name!r}: {problem}")


def _check_resumed(scenario: Scenario, path: Path, content_hash) -> None:
    """A completed run that ``--resume`` keeps must be of the current folder content and UNet config
    (``folder:`` and ``config:`` name a path, whose content can change under the same scenario
    hash); else one-line :class:`RunError`."""
    from benchmark.model_configs import ModelConfigFileError, is_config_path, model_identity

    checks = []
    if is_folder(scenario.dataset):
        checks.append(("partition.json", "dataset_sha256", content_hash, f"the images of {scenario.dataset}"))
    if is_config_path(scenario.model):
        checks.append(("metrics.json", "model_config", lambda: model_identity(scenario.model),
                       f"the UNet config {scenario.model}"))
    for name, key, current, what in checks:
        try:
            recorded = json.loads((path / name).read_text()).get(key)
            now = current()
        except (OSError, ValueError) as e:  # ModelConfigFileError and DatasetError are ValueErrors
            if isinstance(e, ModelConfigFileError) or errors.is_ours(e):
                raise RunError(errors.one_line(e)) from None
            raise RunError(f"{path / name}: unreadable ({type(e).__name__}); remove the run folder or use "
                           "another --out") from None
        if recorded != now:
            raise RunError(f"{path}: ran on another version of {what} ({str(recorded)[:19]}, now {str(now)[:19]}): "
                           "a changed file is a new experiment; use another --out")


def _model_problem(scenario: Scenario, ds) -> str | None:
    """Whether the scenario's UNet fits its data: a ``config:PATH`` file's data fields, and for every
    model that the images' size divides by its downsampling factor; None if it fits."""
    from benchmark.model_configs import MODEL_CONFIGS, ModelConfigFileError, data_fields, is_config_path, read_config

    _n, c, h, _w = ds.images.shape
    if not is_config_path(scenario.model):
        cfg = MODEL_CONFIGS[scenario.model]
    else:
        try:
            cfg = read_config(scenario.model)
            data_fields(scenario.model, cfg, in_channels=c, resolution=h,
                        num_classes=ds.num_classes if scenario.class_conditional else None)
        except ModelConfigFileError as e:
            return str(e)
    factor = 2 ** (len(cfg["block_out_channels"]) - 1)
    return None if h % factor == 0 else (f"model {scenario.model!r} downsamples by {factor}; the images' size "
                                         f"{h} is not divisible by it")


RAY_CONNECT_TIMEOUT_S = 10.0


def check_ray_address(address: str | None) -> None:
    """Before any training: an existing Ray cluster at ``address`` answers (its GCS port takes a
    TCP connection, then ``ray.init`` connects and lets go), else one-line :class:`RunError`.
    ``auto`` and ``ray://`` addresses are left to Ray itself."""
    if not address:
        return
    import socket

    if address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=RAY_CONNECT_TIMEOUT_S):
                pass
        except (OSError, ValueError) as e:
            raise RunError(f"no Ray cluster at --ray-address {address} ({getattr(e, 'strerror', None) or e}); "
                           "start one with `ray start --head` or give its GCS address host:port") from None
    import ray

    try:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    except Exception as e:  # noqa: BLE001 - Ray raises several kinds; all mean: not a cluster we can use
        raise RunError(f"cannot join the Ray cluster at {address} ({str(e).splitlines()[0] if str(e) else e})") \
            from None
    finally:
        ray.shutdown()


def check_writable(out_dir: Path) -> None:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"output folder {out_dir} is not writable ({e.strerror or e})") from None
