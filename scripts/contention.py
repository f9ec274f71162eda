"""How a no-DP row of the privacy suite slows down when another CPU-bound process shares the machine.

A benchmark, not a test: it runs ``privacy-iid-nodp`` (seed 0, its rounds optionally cut with
``--rounds``) twice through ``bench run``, quiet and beside a busy loop on one core, and prints each
run's phase times (metrics.json) and the busy/quiet ratios side by side. Issue bound: the row at most
2.5x its quiet time, its sampling stage at most 3x. The two runs use fresh run folders and the
machine's pretraining and FID caches (warm them with one run first, or the quiet run pays for them).

    python scripts/contention.py [--rounds N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("train_s", "sample_s", "fid_s", "downstream_s", "attack_s")


def one_run(out: Path, scenario_file: Path, busy: bool) -> dict:
    if out.exists():
        shutil.rmtree(out)
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--scenario-file", str(scenario_file),
                        "--seeds", "0", "--out", str(out), "--results", str(out / "results"), "--no-progress"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
    finally:
        if loop is not None:
            loop.kill()
    metrics = json.loads(next(out.glob("*/*/seed-0/metrics.json")).read_text())
    return {"wall_s": wall, **{k: metrics[k] for k in PHASES}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="cut the row's rounds (default: the suite's)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    from benchmark.suites import get_scenario
    from benchmark.threads import available_cores

    scenario = get_scenario("privacy-iid-nodp")
    fields = {k: v for k, v in scenario.to_dict().items() if v is not None}
    if args.rounds:
        fields["rounds"] = args.rounds
    fields["name"] = "contention-nodp"
    work = args.out or Path(tempfile.mkdtemp(prefix="contention-"))
    work.mkdir(parents=True, exist_ok=True)
    scenario_file = work / "scenario.toml"
    scenario_file.write_text("[[scenario]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))

    rows = {}
    for label, busy in (("quiet", False), ("busy", True)):
        rows[label] = one_run(work / label, scenario_file, busy)
    cores = available_cores()
    print(f"privacy-iid-nodp, {fields['rounds']} round(s), {cores} cores; busy = one `while True` process beside it")
    print(f"{'phase':<14}{'quiet s':>10}{'busy s':>10}{'ratio':>8}")
    for k in ("wall_s", *PHASES):
        q, b = rows["quiet"][k], rows["busy"][k]
        print(f"{k:<14}{q:>10.1f}{b:>10.1f}{b / q:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
