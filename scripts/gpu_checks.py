"""GPU checks for the device machine (run by scripts/gpu_checks.sh; see the README).

1. ``verify-dp`` on every model config on CUDA (float32, TF32 off), with our Conv2d fix and with
   Opacus' stock grad sampler (to record what the fix fixes on a GPU).
2. A side-by-side DP step vs plain step timing (median of timed steps after warm-up, synchronised,
   TF32 on as in training), hooks and ghost, with peak memory. Writes JSON to $OUT.
"""

import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.getcwd())

from benchmark.model import MODEL_INPUTS, build_unet, diffusion_loss, make_scheduler  # noqa: E402
from privacy.grad_samplers import stock_opacus_conv2d  # noqa: E402
from privacy.verify import verify_dp  # noqa: E402

OUT = os.environ.get("OUT", ".")
dev = os.environ.get("GPU_CHECKS_DEVICE", "cuda")  # "cpu" to dry-run the script here
small = dev == "cpu"
results = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
           "verify": [], "steps": []}

for name, bs in ((("unet-tiny", 2),) if small else (("unet-tiny", 8), ("unet-28", 8), ("unet-32", 4))):
    for fixed in (True, False):
        t0 = time.perf_counter()
        if fixed:
            rep = verify_dp(name, device=dev, batch_size=bs)
        else:
            with stock_opacus_conv2d():
                rep = verify_dp(name, device=dev, batch_size=bs)
        print(("FIXED " if fixed else "STOCK OPACUS ") + rep.table(), f"({time.perf_counter() - t0:.1f} s)",
              flush=True)
        results["verify"].append({"fixed": fixed, **rep.to_dict()})


def time_steps(name, batch, mode, n=10, warmup=3):
    from opacus import GradSampleModule
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
        GradSampleModuleFastGradientClipping)
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    c, r = MODEL_INPUTS[name]
    model = build_unet(name, in_channels=c, resolution=r, seed=0).to(dev)
    sched = make_scheduler()
    x0 = torch.rand(batch, c, r, r, device=dev) * 2 - 1
    base = torch.optim.Adam(model.parameters(), lr=1e-4)
    if mode == "plain":
        net, opt = model, base
    elif mode == "hooks":
        net = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        opt = DPOptimizer(base, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch)
    else:
        net = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean",
                                                   max_grad_norm=1.0, use_ghost_clipping=True)
        opt = DPOptimizerFastGradientClipping(base, noise_multiplier=1.0, max_grad_norm=1.0,
                                              expected_batch_size=batch, loss_reduction="mean")
    times = []
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if small:
        n, warmup = 2, 1
    for i in range(warmup + n):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        per = diffusion_loss(net, sched, x0, reduction="none")
        if mode == "ghost":
            DPTensorFastGradientClipping(net, opt, per, "mean").backward()
        else:
            per.mean().backward()
        opt.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"model": name, "batch": batch, "mode": mode, "median_s": med, "img_per_s": batch / med,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None}


for name, batch in ((("unet-tiny", 4),) if small else (("unet-28", 256), ("unet-32", 128))):
    rows = [time_steps(name, batch, m) for m in ("plain", "hooks", "ghost")]
    for row in rows:
        row["ratio_to_plain"] = row["img_per_s"] / rows[0]["img_per_s"]
        print(json.dumps(row), flush=True)
        results["steps"].append(row)

with open(os.path.join(OUT, "gpu_checks.json"), "w") as f:
    json.dump(results, f, indent=2)
ok = all(v["passed"] for v in results["verify"] if v["fixed"])
print("ALL FIXED MODES PASS" if ok else "A FIXED MODE FAILED", flush=True)
sys.exit(0 if ok else 1)
