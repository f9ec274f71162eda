"""The CPU path of scripts/regression.sh, the script the GPU workflow runs: train the regression
suite once (cpu scale), then gate: no baseline (exit 2), itself as baseline (exit 0), a baseline
whose FID is 1/1.5 of this run's (exit 1, the row named)."""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "regression.sh"


def gate(env, **extra):
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1800,
                          env=env | {k: str(v) for k, v in extra.items()})


@pytest.mark.slow
def test_cpu_path_of_the_gate_script(tmp_path, feddp_cache):
    work, baseline = tmp_path / "work", tmp_path / "baseline.csv"
    env = os.environ | {"SCALE": "cpu", "WORK": str(work), "BASELINE": str(baseline),
                        "BENCH": f"{sys.executable} -m benchmark.cli", "PYTHONPATH": str(REPO)}
    env.pop("GITHUB_STEP_SUMMARY", None)
    first = gate(env)
    assert first.returncode == 2, first.stderr[-3000:]
    assert "no baseline" in first.stderr and "cp -r" in first.stderr
    new = work / "results" / "regression" / "leaderboard.csv"
    df = pd.read_csv(new)
    assert sorted(df["scenario"]) == ["regression-iid-local-eps4", "regression-iid-nodp"]
    assert (df["scale"] == "cpu").all() and df["fid"].notna().all() and (work / "results" / "regression" / "README.md").exists()

    shutil.copy(new, baseline)
    same = gate(env, RESUME=1)  # the completed runs are kept: only summarize and compare run again
    assert same.returncode == 0, same.stdout[-2000:] + same.stderr[-2000:]
    assert "2 already complete" in same.stderr and "no regression in 2 scenario(s)" in same.stdout

    base = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    row = base.index[base["scenario"] == "regression-iid-nodp"][0]
    base.loc[row, "fid"] = repr(float(base.loc[row, "fid"]) / 1.5)  # this run is 50% worse
    baseline.write_text(base.to_csv(index=False, lineterminator="\n"))
    summary = tmp_path / "step-summary.md"
    worse = gate(env, RESUME=1, GITHUB_STEP_SUMMARY=summary)
    assert worse.returncode == 1, worse.stdout[-2000:] + worse.stderr[-2000:]
    (line,) = [ln for ln in worse.stdout.splitlines() if "WORSE" in ln]
    assert line.startswith("regression-iid-nodp") and "fid" in line
    assert "bench: regression: 1 regression(s): regression-iid-nodp fid" in worse.stderr
    assert "| regression-iid-nodp | fid ↓ |" in summary.read_text()
