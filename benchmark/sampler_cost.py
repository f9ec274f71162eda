"""``bench sampler-cost``: the FID cost of fewer sampling steps, measured on one trained run.

A scenario's ``sampler`` and ``sample_steps`` decide how its FID is computed, and the sampling
steps dominate evaluation time (each step is one UNet forward per image). This command answers
what fewer steps cost: it samples a finished run's global model with every ``(sampler, steps)``
asked for, each from the same generator seed (the run's own sample seed: within the first
``--batch`` images, the same initial noise), scores every set against the run's own FID reference
(the same real test images, at the same ``n``), and times the sampling. Differences between rows are then differences of sampler and steps only.

One more row makes the figures readable: ``real``, n *real* training images (a fixed draw)
against the same reference, the FID floor at this n. FID is biased upwards at small n, so a
sampler's FID means "so far above the floor", not "so far above zero".

On a machine without the Inception file (the GPU machines get no download), sample there with
``--save-samples DIR`` and ``--no-score``, bring DIR back and score it with ``--from-samples DIR``:
the samples are uint8 arrays, as in a run folder's ``samples.npz``.
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_SPECS = "ddpm:1000,ddim:100,ddim:50,ddim:20,ddim:10,dpm-solver:25,dpm-solver:10"


class SamplerCostError(ValueError):
    """A bad ``bench sampler-cost`` request (one line, exit 2)."""


def parse_specs(text: str, num_train_timesteps: int | None = None) -> list[tuple[str, int]]:
    """``"ddim:50,dpm-solver:10"`` -> ``[("ddim", 50), ("dpm-solver", 10)]``, checked."""
    from benchmark.samplers import SAMPLERS  # torch-free

    specs = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"([a-z-]+):(\d+)", part)
        if not m:
            raise SamplerCostError(f"sampler spec {part!r} is not SAMPLER:STEPS (e.g. ddim:50)")
        name, steps = m.group(1), int(m.group(2))
        if name not in SAMPLERS:
            raise SamplerCostError(f"unknown sampler {name!r} in {part!r} (known: {', '.join(SAMPLERS)})")
        _check_steps(name, steps, num_train_timesteps)
        if (name, steps) in specs:
            raise SamplerCostError(f"sampler spec {part!r} is given twice")
        specs.append((name, steps))
    return specs


def _check_steps(name: str, steps: int, num_train_timesteps: int | None) -> None:
    if steps < 1 or (num_train_timesteps is not None and steps > num_train_timesteps):
        raise SamplerCostError(f"'{name}:{steps}': steps must be 1..{num_train_timesteps or 'T'} "
                               "(the model's training timesteps)")


@dataclass
class SamplerCostRow:
    sampler: str          # a sampler, or "real" (real training images: the FID floor)
    steps: int            # denoising steps (UNet forwards per image); 0 for real
    n: int
    fid: float | None = None
    kid: float | None = None
    sample_s: float | None = None
    img_per_s: float | None = None


@dataclass
class SamplerCostReport:
    run: str
    scenario: str
    scenario_hash: str
    seed: int
    model: str
    dataset: str
    n: int
    device: str
    fid_impl: str | None
    fid_reference: str
    versions: dict[str, str]
    rows: list[SamplerCostRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self, markdown: bool = False) -> str:
        head = ("sampler", "steps", "FID", "KID", "sample s", "img/s")
        body = [(r.sampler, str(r.steps) if r.steps else "", _f(r.fid, ".1f"), _f(r.kid, ".4f"),
                 _f(r.sample_s, ".1f"), _f(r.img_per_s, ",.1f")) for r in self.rows]
        title = (f"bench sampler-cost {self.scenario} ({self.model} on {self.dataset}, seed {self.seed}), "
                 f"n = {self.n} vs {self.fid_reference} on {self.device}; {self.fid_impl or 'not scored'}")
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in body]
            return title + "\n\n" + "\n".join(lines)
        widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
        return "\n".join([title, fmt.format(*head), *(fmt.format(*r) for r in body)])


def _f(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def _load_run(run: Path):
    """The run's scenario (as recorded), its seed and its scenario hash (as recorded)."""
    from benchmark.scenarios import Scenario, ScenarioError

    run = Path(run)
    if not (run / "scenario.json").is_file() or not (run / "global_model.pt").is_file():
        raise SamplerCostError(f"{run} is not a run folder (needs scenario.json and global_model.pt; "
                               "see bench run --out)")
    try:
        recorded = json.loads((run / "scenario.json").read_text())
        seed = int(recorded.pop("seed"))
        recorded_hash = recorded.pop("hash", "")
        scenario = Scenario.from_dict(recorded, source=str(run / "scenario.json"))
    except (OSError, ValueError, KeyError, TypeError, ScenarioError) as e:
        raise SamplerCostError(f"{run / 'scenario.json'}: unreadable ({str(e).splitlines()[0]})") from None
    return scenario, seed, recorded_hash or scenario.hash


def sampler_cost(run: Path, specs: list[tuple[str, int]], *, n: int | None = None, device: str = "cpu",
                 data_root: str | None = None, batch_size: int = 256, score: bool = True,
                 save_samples: Path | None = None, from_samples: Path | None = None,
                 progress=None) -> SamplerCostReport:
    """Sample ``run``'s global model with every spec (or read the samples from ``from_samples``)
    and score each set against the run's FID reference. ``n`` defaults to the run's fid_n_samples."""
    from benchmark.data import scenario_dataset
    from benchmark.federation import task
    from benchmark.model import make_scheduler, sample
    from benchmark.perf import _sync
    from benchmark.rundir import package_version as _version
    from benchmark.rundir import write_atomic
    from benchmark.seeding import derive_seed
    from benchmark.fid import compute_fid, fid_floor, fid_reference
    from benchmark.fid_extractors import get_extractor

    say = progress or (lambda _m: None)
    run = Path(run)
    scenario, seed, scenario_hash = _load_run(run)
    for name, steps in specs:
        _check_steps(name, steps, scenario.num_train_timesteps)
    if from_samples is not None and not Path(from_samples).is_dir():
        raise SamplerCostError(f"{from_samples}: cannot read samples (not a folder)")
    n = scenario.fid_n_samples if n is None else n
    test = scenario_dataset(scenario, "test", data_root)
    if not 2 <= n <= len(test.labels):
        raise SamplerCostError(f"n must be 2..{len(test.labels)} (the {scenario.dataset} test split), got {n}")
    train = scenario_dataset(scenario, "train", data_root)
    real, real_key = fid_reference(test, n)
    report = SamplerCostReport(
        run=str(run), scenario=scenario.name, scenario_hash=scenario_hash, seed=seed, model=scenario.model,
        dataset=scenario.dataset, n=n, device=str(device),
        fid_impl=get_extractor(scenario.fid_impl).impl if score else None,
        fid_reference=real_key, versions={d: _version(d) for d in ("torch", "diffusers")})

    model = None
    if from_samples is None:
        model = task.build_model(scenario, train)
        try:
            import torch

            state = torch.load(run / "global_model.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, RuntimeError) as e:
            raise SamplerCostError(f"{run / 'global_model.pt'}: cannot load ({str(e).splitlines()[0]})") from None
        model.to(device)
    sample_seed = derive_seed("sample", seed)
    train_scheduler = make_scheduler(scenario.num_train_timesteps)
    sync = _sync(device)
    num_classes = train.num_classes if scenario.class_conditional else None
    c, r = train.images.shape[1], train.images.shape[-1]

    def score_row(row: SamplerCostRow, images: np.ndarray) -> None:
        if score:
            res = compute_fid(real, images, device=device, real_key=real_key, extractor=scenario.fid_impl)
            row.fid, row.kid = float(res.fid), float(res.kid)

    # The floor: n real training images (never in the reference, which is test data), as runs score it.
    if score:
        if n > len(train.labels):
            raise SamplerCostError(f"n = {n} is more than the {len(train.labels)} training images of the floor row")
        floor = SamplerCostRow("real", 0, n)
        say("real training images (the FID floor at this n)")
        res = fid_floor(train, test, n, device=device, extractor=scenario.fid_impl)
        floor.fid, floor.kid = float(res.fid), float(res.kid)
        report.rows.append(floor)

    for name, steps in specs:
        row = SamplerCostRow(name, steps, n)
        file_name = f"{name}-{steps}.npz"
        if from_samples is not None:
            path = Path(from_samples) / file_name
            try:
                with np.load(path) as z:
                    images = z["images"]
            except (OSError, KeyError, ValueError) as e:
                raise SamplerCostError(f"{path}: cannot read samples ({str(e).splitlines()[0]})") from None
            if images.shape != (n, c, r, r) or images.dtype != np.uint8:
                raise SamplerCostError(f"{path}: expected uint8 images of shape {(n, c, r, r)}, "
                                       f"got {images.dtype} {images.shape}")
        else:
            say(f"sample {name} {steps} steps x {n}")
            sync()
            t0 = time.perf_counter()
            images, labels = sample(model, train_scheduler, n, steps=steps, sampler=name, num_classes=num_classes,
                                    seed=sample_seed, device=device, batch_size=batch_size)
            sync()
            row.sample_s = time.perf_counter() - t0
            row.img_per_s = n / row.sample_s
            if save_samples is not None:
                Path(save_samples).mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                np.savez_compressed(buf, images=images, labels=labels)
                write_atomic(Path(save_samples) / file_name, buf.getvalue())
        if score:
            say(f"score {name} {steps}")
        score_row(row, images)
        report.rows.append(row)
    return report
