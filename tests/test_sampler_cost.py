"""``bench sampler-cost``: every sampler and step count of one trained run, scored against the run's
own FID reference; samples saved on one machine and scored on another give the same figures."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmark.scenarios import Scenario
from benchmark.sampler_cost import SamplerCostError, parse_specs


def bench(*args):
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], capture_output=True, text=True)


def bench_here(capsys, *args):
    """``bench`` in this process (the error paths: no second torch import)."""
    from benchmark.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained_run(tmp_path, fake_run):
    """A run folder whose global model is a real (untrained) unet-tiny for 8x8 digits."""
    from benchmark.data import load_dataset
    from benchmark.federation import task

    scenario = Scenario(name="digits-tiny", dataset="digits-embedded", fid_n_samples=8)
    run = fake_run(tmp_path / "runs", scenario, 0)
    model = task.build_model(scenario, load_dataset("digits-embedded"), seed=0)
    torch.save(model.state_dict(), run / "global_model.pt")
    return run


def test_parse_specs_checks_every_part():
    assert parse_specs("ddim:50, dpm-solver:10,ddpm:1000") == [("ddim", 50), ("dpm-solver", 10), ("ddpm", 1000)]
    for bad, what in (("ddim", "SAMPLER:STEPS"), ("ddim:x", "SAMPLER:STEPS"), ("euler:10", "unknown sampler"),
                      ("ddim:0", "steps must be"), ("ddim:5,ddim:5", "twice")):
        with pytest.raises(SamplerCostError, match=what):
            parse_specs(bad)
    with pytest.raises(SamplerCostError, match="1..1000"):
        parse_specs("ddpm:1001", num_train_timesteps=1000)


def test_every_sampler_is_scored_against_the_run_reference_and_saved_samples_score_the_same(
        trained_run, tmp_path, feddp_cache):
    saved = tmp_path / "samples"
    p = bench("sampler-cost", str(trained_run), "--samplers", "ddim:2,dpm-solver:3", "--n", "8",
              "--save-samples", str(saved), "--json", "--out", str(tmp_path / "cost.json"))
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert json.loads((tmp_path / "cost.json").read_text()) == report
    rows = {(r["sampler"], r["steps"]): r for r in report["rows"]}
    assert list(rows) == [("real", 0), ("ddim", 2), ("dpm-solver", 3)]
    assert report["n"] == 8 and report["fid_reference"].startswith("digits-embedded-test-8px-n8")
    for key in (("ddim", 2), ("dpm-solver", 3)):
        r = rows[key]
        assert r["sample_s"] > 0 and r["img_per_s"] == pytest.approx(8 / r["sample_s"])
        # An untrained UNet turns noise into noise: far from real digits, and real digits are the floor.
        assert np.isfinite(r["fid"]) and r["fid"] > rows[("real", 0)]["fid"] + 50
        with np.load(saved / f"{key[0]}-{key[1]}.npz") as z:
            assert z["images"].shape == (8, 1, 8, 8) and z["images"].dtype == np.uint8
    # Scoring the saved sets elsewhere (the GPU machines sample, this machine scores) agrees exactly.
    q = bench("sampler-cost", str(trained_run), "--samplers", "ddim:2,dpm-solver:3", "--n", "8",
              "--from-samples", str(saved), "--markdown", "--out", str(tmp_path / "scored.json"))
    assert q.returncode == 0, q.stderr
    assert "| sampler | steps | FID | KID | sample s | img/s |" in q.stdout
    assert "digits-tiny" in q.stdout and "n = 8" in q.stdout
    again = {(r["sampler"], r["steps"]): r for r in json.loads((tmp_path / "scored.json").read_text())["rows"]}
    for key, r in rows.items():
        assert again[key]["fid"] == pytest.approx(r["fid"], rel=1e-6)
        assert again[key]["kid"] == pytest.approx(r["kid"], rel=1e-6, abs=1e-9)
    assert again[("ddim", 2)]["sample_s"] is None  # not sampled here: no timing claimed


@pytest.mark.parametrize("args, message", [
    (["--samplers", "ddim:abc"], "not SAMPLER:STEPS"),
    (["--samplers", "ddpm:5000"], "steps must be 1..1000"),
    (["--n", "100000"], "n must be 2.."),
    (["--no-score"], "--no-score needs --save-samples"),
    (["--samplers", "ddim:2", "--n", "8", "--from-samples", "nowhere"], "cannot read samples"),
])
def test_bad_requests_exit_2_with_one_line(trained_run, args, message, capsys, feddp_cache):
    code, _, err = bench_here(capsys, "sampler-cost", str(trained_run), *args)
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip().splitlines()[0]] and message in err


def test_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    code, _, err = bench_here(capsys, "sampler-cost", str(tmp_path))
    assert code == 2 and err.startswith("bench: error:") and "is not a run folder" in err
