"""``bench perf``: images/s and peak memory of the training step in every mode, on one machine, in one run.

For one model config and batch size: the plain (non-private) step and each DP grad-sample mode the
product offers (those registered in :mod:`privacy.modes`: Opacus' ``hooks`` and ``ghost``, our
``mixed-ghost`` and ``mixed-ghost-bk``), each a full optimizer step (forward, backward, clipping,
noise, Adam) built by :func:`privacy.dpsgd.make_dp_step` as training builds it, timed as the median of
``steps`` synchronised steps after ``warmup`` untimed ones, with the ratio to the plain step; then
sampling images/s (the scenario sampler, ``sample_steps`` denoising steps) and FID-feature
images/s (the offline Inception extractor). Peak memory is CUDA's ``max_memory_allocated`` per
mode (not measured on CPU: the caching allocator's statistics exist only on CUDA).

Ratios are only comparable within one run (same machine, same load): on a shared CPU the medians
move by tens of percent between runs, which is why every mode is timed in the same call, and on
CPU the modes take turns step by step (on CUDA they run one after the other, for per-mode peak
memory).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from privacy.modes import grad_sample_mode_names

PLAIN = "plain"  # the non-private step every ratio is taken to


def train_modes() -> tuple[str, ...]:
    """``plain`` and every registered grad-sample mode."""
    return (PLAIN, *grad_sample_mode_names())


class PerfError(ValueError):
    """A bad ``bench perf`` request (one line, exit 2)."""


@dataclass
class PerfRow:
    what: str                  # train / sample / fid-features
    mode: str                  # plain, a DP mode, or the sampler
    batch: int
    median_s: float
    img_per_s: float
    ratio_to_plain: float | None = None
    peak_gib: float | None = None


@dataclass
class PerfReport:
    model: str
    device: str
    device_name: str
    batch: int
    amp: str | None
    compiled: bool
    steps: int
    warmup: int
    torch_threads: int
    versions: dict[str, str]
    rows: list[PerfRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lines = [f"bench perf {self.model} batch {self.batch} on {self.device_name}"
                 f" (amp {self.amp or 'off'}{', torch.compile' if self.compiled else ''}, "
                 f"median of {self.steps} steps after {self.warmup}, "
                 f"{self.torch_threads} threads; torch {self.versions.get('torch')}, opacus "
                 f"{self.versions.get('opacus')})",
                 f"{'what':13s} {'mode':15s} {'img/s':>10s} {'vs plain':>9s} {'peak GiB':>9s} {'median s':>9s}"]
        for r in self.rows:
            ratio = "" if r.ratio_to_plain is None else f"{r.ratio_to_plain:.2f}x"
            peak = "n/a" if r.peak_gib is None else f"{r.peak_gib:.2f}"
            lines.append(f"{r.what:13s} {r.mode:15s} {r.img_per_s:10,.1f} {ratio:>9s} {peak:>9s} {r.median_s:9.4f}")
        return "\n".join(lines)


def _sync(device: str):
    return (lambda: torch.cuda.synchronize(device)) if str(device).startswith("cuda") else (lambda: None)


def _peak_reset(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if str(device).startswith("cuda") else None


def _timed(fn, *, steps: int, warmup: int, device: str) -> float:
    sync = _sync(device)
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def autocast(device: str, amp: str | None):
    """bf16 autocast around the forward (and loss) only; the backward follows the forward's dtypes."""
    if amp is None:
        return contextlib.nullcontext()
    if amp != "bf16":
        raise ValueError(f"unknown amp {amp!r} (bf16)")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def tf32_matmuls(device: str, enabled: bool):
    """TF32 for cuDNN convolutions and CUDA matmuls inside the block (on a CUDA device), and the
    flags as they were after it: they are process-wide, and timing must not change what later
    code in the process computes."""
    if not str(device).startswith("cuda"):
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def make_train_step(model: torch.nn.Module, mode: str, *, batch: int, device: str, amp: str | None = None,
                    max_grad_norm: float = 1.0, noise_multiplier: float = 1.0, seed: int = 0,
                    compiled: bool = False):
    """One optimizer step of ``mode`` on ``model`` (which it wraps); returns ``step()`` and a cleanup.
    ``compiled``: the model's forward is ``torch.compile``'d first (the DP wrappers' hooks still
    fire on its layers; ``bench verify-dp --compile`` checks the per-sample gradients)."""
    from benchmark.model import compile_forward, diffusion_loss, make_scheduler
    from privacy import dpsgd
    from privacy.mixed_ghost import quiet_output_hooks

    if mode not in train_modes():
        raise PerfError(f"unknown mode {mode!r} (known: {', '.join(train_modes())})")
    if compiled:
        compile_forward(model)
    c, r = model.config.in_channels, model.config.sample_size
    gen = torch.Generator(device=device).manual_seed(seed)
    x0 = torch.rand(batch, c, r, r, generator=gen, device=device) * 2 - 1
    labels = (torch.randint(0, model.config.num_class_embeds, (batch,), generator=gen, device=device)
              if model.config.num_class_embeds else None)
    sched = make_scheduler()
    base = torch.optim.Adam(model.parameters(), lr=1e-4)
    if mode == PLAIN:
        def backward(per):
            with quiet_output_hooks():
                per.mean().backward()
        net, opt, close = model, base, (lambda: None)
    else:
        dp = dpsgd.make_dp_step(model, base, grad_sample_mode=mode, max_grad_norm=max_grad_norm,
                                noise_multiplier=noise_multiplier, expected_batch_size=batch,
                                noise_generator=torch.Generator(device=device).manual_seed(seed + 1), amp=amp)
        net, opt, backward, close = dp.module, dp.optimizer, dp.backward, dp.close
    net.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            per = diffusion_loss(net, sched, x0, labels, generator=gen, reduction="none")
        backward(per.float())
        opt.step()

    return step, close


def run_perf(model_name: str, *, batch: int, device: str = "cpu", modes: tuple[str, ...] | None = None,
             steps: int = 5, warmup: int = 2, amp: str | None = None, conditional: bool = False,
             sampler: str = "ddim", sample_steps: int = 10, sample_batch: int | None = None,
             fid_batch: int | None = None, tf32: bool = True, compiled: bool = False,
             progress=None) -> PerfReport:
    """Time every mode of ``modes`` (default: all; ``plain`` first: the ratios are to it), sampling and FID
    features.
    ``compiled`` compiles every training mode's forward (compilation happens in the warm-up steps,
    so give ``warmup`` at least 1); the modes then run one after the other even on a CPU, so
    there the ratios are noisier. Sampling and FID features stay eager."""
    from importlib import metadata

    from benchmark.model import MODEL_INPUTS, build_unet, make_scheduler, sample

    known = train_modes()
    modes = known if modes is None else tuple(modes)
    if PLAIN not in modes:
        modes = (PLAIN, *modes)
    unknown = [m for m in modes if m not in known]
    if unknown:
        raise PerfError(f"unknown mode(s) {', '.join(unknown)} (known: {', '.join(known)})")
    c, r = MODEL_INPUTS[model_name]
    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    versions = {d: metadata.version(d) for d in ("torch", "opacus", "diffusers")}
    if compiled and warmup < 1:
        raise PerfError("--compile needs at least one warm-up step (compilation is not timed)")
    report = PerfReport(model_name, str(device), name, batch, amp, compiled, steps, warmup, torch.get_num_threads(),
                        versions)
    say = progress or (lambda _msg: None)
    order = (PLAIN, *[m for m in modes if m != PLAIN])

    def build(mode):
        model = build_unet(model_name, in_channels=c, resolution=r, num_classes=10 if conditional else None,
                           seed=0).to(device)
        return make_train_step(model, mode, batch=batch, device=device, amp=amp, compiled=compiled)

    with tf32_matmuls(device, tf32):
        medians, peaks = {}, {}
        if str(device).startswith("cuda") or compiled:
            # A dedicated GPU: one mode at a time, so that each mode's peak memory is its own. Compiled
            # modes too: alternating between UNet instances with different hooks thrashes dynamo's
            # cache, so each mode starts from a reset dynamo and compiles in its warm-up.
            for mode in order:
                say(f"train {mode}")
                gc.collect()  # the previous mode's model, optimizer state and Opacus hooks (cycles)
                if compiled:
                    torch._dynamo.reset()
                _peak_reset(device)
                step, close = build(mode)
                try:
                    medians[mode] = _timed(step, steps=steps, warmup=warmup, device=device)
                    peaks[mode] = _peak(device)
                finally:
                    close()
                del step, close
        else:
            # A (shared) CPU: the modes take turns step by step, so that load from other processes
            # falls on every mode alike and the ratios stay meaningful.
            say(f"train {', '.join(order)} (interleaved)")
            built = {mode: build(mode) for mode in order}
            times = {mode: [] for mode in order}
            try:
                for i in range(warmup + steps):
                    for mode in order:
                        t0 = time.perf_counter()
                        built[mode][0]()
                        if i >= warmup:
                            times[mode].append(time.perf_counter() - t0)
            finally:
                for _step, close in built.values():
                    close()
            medians = {mode: statistics.median(t) for mode, t in times.items()}
        plain_ips = batch / medians[PLAIN]
        for mode in order:
            ips = batch / medians[mode]
            report.rows.append(PerfRow("train", mode, batch, medians[mode], ips, ips / plain_ips, peaks.get(mode)))
        if sample_steps > 0:
            say(f"sample {sampler}")
            model = build_unet(model_name, in_channels=c, resolution=r, seed=0).to(device)
            sb = sample_batch or batch
            _peak_reset(device)
            with autocast(device, amp):
                med = _timed(lambda: sample(model, make_scheduler(), sb, steps=sample_steps, sampler=sampler,
                                            device=device, batch_size=sb),
                             steps=max(1, steps // 2), warmup=1, device=device)
            report.rows.append(PerfRow("sample", f"{sampler}-{sample_steps}", sb, med, sb / med, None, _peak(device)))
        if fid_batch != 0:
            import numpy as np

            from benchmark.fid import inception_features

            say("fid features")
            n = fid_batch or min(batch, 64)
            images = np.random.default_rng(0).integers(0, 256, (n, c, r, r), dtype=np.uint8)
            inception_features(images[:2], device=device)  # loads (and caches) the network outside the timing
            _peak_reset(device)
            med = _timed(lambda: inception_features(images, device=device), steps=max(1, steps // 2), warmup=1,
                         device=device)
            report.rows.append(PerfRow("fid-features", "inception", n, med, n / med, None, _peak(device)))
    return report
