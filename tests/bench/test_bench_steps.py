"""pytest-benchmark benchmarks (``tox -e bench``): never timed assertions, only measurements.

Machine info is extended with the versions that decide the speed (torch, opacus, diffusers).
"""

import numpy as np
import pytest
import torch

from benchmark.model import build_unet, diffusion_loss, make_scheduler, sample

BATCH = 32


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_unet("unet-tiny", in_channels=1, resolution=28, seed=0)
    return model, make_scheduler(1000), torch.rand(BATCH, 1, 28, 28) * 2 - 1


def test_plain_training_step(benchmark, tiny):
    model, sched, x0 = tiny
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step():
        loss = diffusion_loss(model, sched, x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    benchmark.extra_info["images_per_step"] = BATCH
    benchmark.pedantic(step, rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("mode", ["hooks", "ghost", "mixed-ghost", "mixed-ghost-bk"])
def test_dp_training_step(benchmark, mode):
    from benchmark.perf import make_train_step

    model = build_unet("unet-tiny", in_channels=1, resolution=28, seed=0)
    step, close = make_train_step(model, mode, batch=BATCH, device="cpu")
    benchmark.extra_info["images_per_step"] = BATCH
    benchmark.extra_info["mode"] = mode
    try:
        benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    finally:
        close()


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver"])
def test_sampling_10_steps(benchmark, tiny, sampler):
    model, sched, _ = tiny
    benchmark.extra_info["images"] = BATCH
    benchmark.pedantic(lambda: sample(model, sched, BATCH, steps=10, sampler=sampler, seed=0), rounds=3,
                       warmup_rounds=1)


def test_inception_features(benchmark, tmp_path, monkeypatch):
    from benchmark.fid import inception_features

    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path))
    images = np.random.default_rng(0).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    inception_features(images[:2])  # build the cached network file outside the timing
    benchmark.extra_info["images"] = len(images)
    benchmark.pedantic(lambda: inception_features(images), rounds=3, warmup_rounds=1)


ALLOCATOR_PAIRS = 2  # policy on / off, alternating which goes first; medians over the pairs
# One process per measurement: glibc reads the malloc settings at start-up (benchmark.allocator).
FID_CHILD = """
import json, resource, statistics, sys, time
from benchmark.threads import passive_waits, set_main_threads
passive_waits()
if sys.argv[1] == "kept":
    from benchmark.allocator import keep_freed_memory
    assert keep_freed_memory()
set_main_threads()
import numpy as np
from benchmark.fid import inception_features
images = np.random.default_rng(0).integers(0, 256, (32, 1, 8, 8), dtype=np.uint8)  # the suites' 8x8 digits' shape
inception_features(images[:2])
times, r0 = [], resource.getrusage(resource.RUSAGE_SELF)
for _ in range(2):
    t = time.perf_counter(); feats = inception_features(images); times.append(time.perf_counter() - t)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s": statistics.median(times), "sys_s": (r1.ru_stime - r0.ru_stime) / 2,
                  "faults": (r1.ru_minflt - r0.ru_minflt) // 2, "sum": float(feats.sum())}))
"""


def test_inception_features_with_freed_memory_kept(benchmark, tmp_path):
    """FID's Inception pass (32 images at 299 px) with freed memory kept in the heap
    (benchmark.allocator, what ``bench`` sets) and with glibc's defaults, side by side in fresh
    processes, ALLOCATOR_PAIRS times: medians, the ratio, page faults and kernel time per pass, and
    the features' sum in both (the allocator must not change them)."""
    import json
    import os
    import statistics
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | {"FEDDP_CACHE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", "from benchmark.inception import ensure_inception_file as e; e()"],
                   env=env, check=True)
    runs = {"kept": [], "defaults": []}

    def pairs():
        for rep in range(ALLOCATOR_PAIRS):
            for tag in (("defaults", "kept") if rep % 2 == 0 else ("kept", "defaults")):
                out = subprocess.run([sys.executable, "-c", FID_CHILD, tag], env=env, capture_output=True,
                                     text=True, check=True)
                runs[tag].append(json.loads(out.stdout.splitlines()[-1]))

    benchmark.pedantic(pairs, rounds=1, iterations=1)
    med = {tag: {k: statistics.median(r[k] for r in rs) for k in ("s", "sys_s", "faults")} for tag, rs in runs.items()}
    for tag, m in med.items():
        benchmark.extra_info.update({f"{k}_{tag}": round(v, 3) for k, v in m.items()})
    benchmark.extra_info["ratio_kept_to_defaults"] = round(med["kept"]["s"] / med["defaults"]["s"], 3)
    assert len({r["sum"] for rs in runs.values() for r in rs}) == 1
