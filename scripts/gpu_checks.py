"""GPU checks for the device machine (run by scripts/gpu_checks.sh; see the README).

1. ``verify-dp`` on every model config on CUDA, with our Conv2d fix: in the precision training uses
   (torch's defaults: TF32 convolutions on; the clip margin of privacy.dpsgd.make_dp_step, every
   contribution <= C), with TF32 off (float32, margin 0), and with TF32 on but the margin off (a
   diagnostic: the TF32 norm error the margin must cover, and the contributions it would allow);
   and with Opacus' stock grad sampler, TF32 off (to record what the fix fixes on a GPU).
2. ``bench perf`` (benchmark/perf.py) on unet-28 b256 and unet-32 b128: plain, hooks, ghost,
   mixed-ghost, mixed-ghost-bk (median of 10 synchronised steps after 3, TF32 on as in training),
   float32 and bf16 autocast, peak memory per mode, DPM-Solver sampling and FID features.
3. Last (a timeout loses the least): ``torch.compile`` - ``verify-dp --compile`` on unet-32 and
   ``bench perf --compile`` on unet-32 b128 (float32), for the plain and DP steps alike.
   Writes JSON to $OUT (after each table, so a timeout keeps what was measured).
"""

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())

from privacy.grad_samplers import stock_opacus_conv2d  # noqa: E402
from privacy.verify import verify_dp  # noqa: E402

OUT = os.environ.get("OUT", ".")
dev = os.environ.get("GPU_CHECKS_DEVICE", "cuda")  # "cpu" to dry-run the script here
small = dev == "cpu"
results = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
           "verify": []}

# check -> (verify_dp keywords, whether it must pass). The margin-off diagnostic must not fail the
# script: its norm errors are what tests/test_gpu.py holds below half the TF32 margin.
CHECKS = {"training-precision": ({}, True), "float32": ({"tf32": False}, True),
          "tf32-no-margin": ({"tf32": True, "clip_margin": 0.0}, False),
          "stock-opacus": ({"tf32": False, "modes": ("hooks", "ghost")}, False)}
for name, bs in ((("unet-tiny", 2),) if small else (("unet-tiny", 8), ("unet-28", 8), ("unet-32", 4))):
    for check, (kw, must_pass) in CHECKS.items():
        t0 = time.perf_counter()
        if check == "stock-opacus":  # what the fix fixes, in Opacus' own modes
            with stock_opacus_conv2d():
                rep = verify_dp(name, device=dev, batch_size=bs, **kw)
        else:  # every mode: hooks, ghost, mixed-ghost, mixed-ghost-bk
            rep = verify_dp(name, device=dev, batch_size=bs, **kw)
        print(check.upper() + " " + rep.table(), f"({time.perf_counter() - t0:.1f} s)", flush=True)
        results["verify"].append({"check": check, "fixed": check != "stock-opacus", "must_pass": must_pass,
                                  **rep.to_dict()})
    with open(os.path.join(OUT, "gpu_checks.json"), "w") as f:  # partial results survive a timeout
        json.dump(results, f, indent=2)


# 2. bench perf (benchmark/perf.py): plain and every DP mode, sampling and FID features, TF32 on,
# in float32 and with bf16 autocast. The bar: the fastest correct DP mode >= 0.8x plain on
# unet-32 and >= 0.5x on unet-28, peak memory <= 1.5x plain.
from benchmark.perf import run_perf  # noqa: E402

results["perf"] = []
for name, batch in ((("unet-tiny", 4),) if small else (("unet-28", 256), ("unet-32", 128))):
    for amp in (None, "bf16"):
        t0 = time.perf_counter()
        rep = run_perf(name, batch=batch, device=dev, steps=2 if small else 10, warmup=1 if small else 3,
                       amp=amp, sample_steps=2 if small else 10, fid_batch=4 if small else 256,
                       sampler="dpm-solver")
        print(rep.table(), f"({time.perf_counter() - t0:.1f} s)", flush=True)
        results["perf"].append(rep.to_dict())
        plain = next(r for r in rep.rows if r.mode == "plain")
        for r in rep.rows:
            if r.what == "train" and r.mode != "plain" and r.peak_gib and plain.peak_gib:
                print(f"  {r.mode}: {r.ratio_to_plain:.2f}x plain, memory {r.peak_gib / plain.peak_gib:.2f}x plain")
        with open(os.path.join(OUT, "gpu_checks.json"), "w") as f:  # partial results survive a timeout
            json.dump(results, f, indent=2)

# 3. torch.compile: correctness first (compiled forwards vs the eager per-sample loop), then speed.
name, bs, batch = ("unet-tiny", 2, 4) if small else ("unet-32", 4, 128)
t0 = time.perf_counter()
rep = verify_dp(name, device=dev, batch_size=bs, compiled=True)
print("COMPILED " + rep.table(), f"({time.perf_counter() - t0:.1f} s)", flush=True)
results["verify"].append({"check": "compiled", "fixed": True, "must_pass": True, **rep.to_dict()})
with open(os.path.join(OUT, "gpu_checks.json"), "w") as f:
    json.dump(results, f, indent=2)
t0 = time.perf_counter()
rep = run_perf(name, batch=batch, device=dev, steps=2 if small else 10, warmup=1 if small else 3,
               sample_steps=0, fid_batch=0, compiled=True)
print(rep.table(), f"({time.perf_counter() - t0:.1f} s)", flush=True)
results["perf"].append(rep.to_dict())

with open(os.path.join(OUT, "gpu_checks.json"), "w") as f:
    json.dump(results, f, indent=2)
ok = all(v["passed"] for v in results["verify"] if v["must_pass"])
# The margin must cover TF32's norm error with room to spare (tests/test_gpu.py holds it below half).
from privacy.dpsgd import CLIP_MARGINS  # noqa: E402

worst = max((m["norm_rel_err"] for v in results["verify"] if v["check"] == "tf32-no-margin" and v["precision"] == "tf32"
             for m in v["modes"]), default=0.0)
print(f"TF32 norm error {worst:.2e}, clip margin {CLIP_MARGINS['tf32']:.2e}", flush=True)
ok = ok and worst < CLIP_MARGINS["tf32"] / 2
print("ALL FIXED MODES PASS" if ok else "A FIXED MODE FAILED", flush=True)
sys.exit(0 if ok else 1)
