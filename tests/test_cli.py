"""The `bench` command end to end: real federated runs (Flower simulation), resume, one-line errors."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.runner import RUN_FILES

TINY = """
[[scenario]]
name = "tiny-iid"
num_clients = 2
clients_per_round = 2
rounds = 1
max_train_images = 32
batch_size = 16
num_train_timesteps = 100
sample_steps = 2
fid_n_samples = 16
"""

TWO = TINY + """
[[scenario]]
name = "tiny-dirichlet"
partition = "dirichlet-0.5"
num_clients = 3
clients_per_round = 2
rounds = 2
max_train_images = 48
batch_size = 16
num_train_timesteps = 100
sample_steps = 2
fid_n_samples = 16
"""


def bench(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_error_line(res):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    return res.returncode != 0 and lines[-1].startswith("bench: error: ") and "Traceback" not in res.stderr


def test_run_resume_and_summarize(tmp_path, feddp_cache):
    scn = tmp_path / "tiny.toml"
    scn.write_text(TINY)
    out, results = tmp_path / "runs", tmp_path / "results"
    args = ["run", "--scenario-file", str(scn), "--out", str(out), "--results", str(results), "--no-progress"]
    res = bench(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = [p for p in (out / "custom").glob("tiny-iid-*/seed-0")]
    assert all((run / f).exists() for f in RUN_FILES)
    assert not list(out.rglob(".*partial*"))
    df = pd.read_csv(results / "custom" / "leaderboard.csv")
    assert len(df) == 1 and np.isfinite(df["fid"][0]) and df["fid"][0] > 0
    assert df["fid_n_samples"][0] == 16 and df["fid_impl"][0].startswith("clean-fid")
    assert len(list((results / "custom" / "samples").glob("tiny-iid-*.png"))) == 1
    assert np.isnan(df["downstream_acc"][0])  # unconditional: no downstream accuracy
    samples = np.load(run / "samples.npz")["images"]
    assert samples.shape == (16, 1, 28, 28) and samples.dtype == np.uint8

    # A second run without --resume refuses before doing anything; with --resume it skips.
    again = bench(*args)
    assert one_error_line(again) and "--resume" in again.stderr
    mtime = (run / "DONE").stat().st_mtime_ns
    resumed = bench(*args, "--resume")
    assert resumed.returncode == 0 and "1 already complete" in resumed.stderr
    assert (run / "DONE").stat().st_mtime_ns == mtime

    # summarize rebuilds the same CSV from the run folders.
    before = (results / "custom" / "leaderboard.csv").read_bytes()
    assert bench("summarize", str(out), "--results", str(results)).returncode == 0
    assert (results / "custom" / "leaderboard.csv").read_bytes() == before


@pytest.mark.slow
def test_kill_mid_suite_then_resume(tmp_path, feddp_cache):
    scn = tmp_path / "two.toml"
    scn.write_text(TWO)
    out, results = tmp_path / "runs", tmp_path / "results"
    args = [sys.executable, "-m", "benchmark.cli", "run", "--scenario-file", str(scn), "--out", str(out),
            "--results", str(results), "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    first = None
    while time.time() < deadline and first is None:
        done = list(out.glob("custom/tiny-iid-*/seed-0/DONE"))
        first = done[0].parent if done else None
        time.sleep(0.5)
    assert first is not None, "first run never completed"
    time.sleep(3)  # well inside the second run
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(out.glob("custom/tiny-dirichlet-*/seed-0/DONE"))
    first_mtime = (first / "DONE").stat().st_mtime_ns
    assert not (results / "custom" / "leaderboard.csv").exists()

    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 already complete" in res.stderr
    assert (first / "DONE").stat().st_mtime_ns == first_mtime  # not redone
    assert not list(out.rglob(".*partial*"))  # the killed run's leftovers were cleaned
    df = pd.read_csv(results / "custom" / "leaderboard.csv")
    assert sorted(df["scenario"]) == ["tiny-dirichlet", "tiny-iid"] and df["fid"].notna().all()


@pytest.mark.parametrize("argv, match", [
    (["run", "--suite", "nope"], "unknown suite 'nope'"),
    (["run", "--scenario", "nope"], "unknown scenario 'nope'"),
    (["run", "--suite", "smoke", "--scale", "tpu"], "unknown scale"),
    (["run", "--suite", "smoke", "--device", "cuda"] if not __import__("torch").cuda.is_available()
     else ["run", "--suite", "smoke", "--device", "tpu"], "device"),
    (["run", "--scenario-file", "/nonexistent.toml"], "does not exist"),
    (["summarize", "/nonexistent-runs"], "does not exist"),
])
def test_bad_input_is_one_line(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: ") and match in err[0]


def test_bad_scenario_file_field(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\nnum_clients = 4\nclients_per_round = 9\n')
    assert main(["run", "--scenario-file", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "clients_per_round" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_more_clients_than_images_is_one_line(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\ndataset = "digits-embedded"\nnum_clients = 4000\nclients_per_round = 2\n')
    assert main(["run", "--scenario-file", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bench: error: ") and "clients" in err[-1]
    assert not list((tmp_path / "o").rglob("DONE"))


def test_unwritable_out(tmp_path, capsys):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")
        out = blocker / "sub"  # a path under a regular file cannot be created, even by root
    else:
        out = tmp_path / "ro"
        out.mkdir(mode=0o500)
    assert main(["run", "--suite", "smoke", "--out", str(out)]) == 2
    assert "not writable" in capsys.readouterr().err


def test_dry_run_and_list(tmp_path, capsys):
    assert main(["run", "--suite", "smoke", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("todo") == 2 and "smoke-iid" in out
    assert main(["list"]) == 0 and "seed-paper" in capsys.readouterr().out
    assert main(["list", "--models"]) == 0 and "unet-32" in capsys.readouterr().out


DP_TINY = """
[[scenario]]
name = "tiny-local"
num_clients = 2
clients_per_round = 2
rounds = 2
max_train_images = 32
batch_size = 8
num_train_timesteps = 100
sample_steps = 2
fid_n_samples = 16
class_conditional = true
dp_mode = "local-dpsgd"
target_epsilon = 4.0
delta = 1e-5

[[scenario]]
name = "tiny-central"
num_clients = 3
clients_per_round = 2
rounds = 2
max_train_images = 36
batch_size = 8
num_train_timesteps = 100
sample_steps = 2
fid_n_samples = 16
dp_mode = "central-dp"
target_epsilon = 4.0
delta = 1e-5

[[scenario]]
name = "tiny-central-clientclip"
num_clients = 2
clients_per_round = 2
rounds = 1
max_train_images = 24
batch_size = 8
num_train_timesteps = 100
sample_steps = 2
fid_n_samples = 16
dp_mode = "central-dp"
central_clipping = "client"
max_grad_norm = 0.2
target_epsilon = 10.0
delta = 1e-5
"""


@pytest.mark.slow
def test_dp_runs_record_their_accounting(tmp_path, feddp_cache):
    from privacy.accounting import client_level_epsilon

    scn = tmp_path / "dp.toml"
    scn.write_text(DP_TINY)
    res = bench("run", "--scenario-file", str(scn), "--out", str(tmp_path / "runs"), "--results",
                str(tmp_path / "results"), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "verify-dp unet-tiny" in res.stderr
    df = pd.read_csv(tmp_path / "results" / "custom" / "leaderboard.csv").set_index("scenario")
    local, central = df.loc["tiny-local"], df.loc["tiny-central"]
    assert local["dp_level"] == "sample" and local["accountant"] == "opacus-rdp"
    assert 0 < local["epsilon"] <= 4.0 and local["sample_rate"] > 0 and local["noise_multiplier"] > 0
    assert 0 <= local["downstream_acc"] <= 1  # class-conditional: scored on real test images
    assert central["dp_level"] == "client" and central["accountant"] == "flwr-rdp-no-amplification"
    assert central["epsilon"] <= 4.0
    assert central["epsilon"] == pytest.approx(client_level_epsilon(
        noise_multiplier=central["noise_multiplier"], rounds=2, delta=1e-5, num_clients=3), rel=1e-6)
    clientclip = df.loc["tiny-central-clientclip"]
    assert clientclip["max_grad_norm"] == 0.2 and 0 < clientclip["epsilon"] <= 10.0


def test_missing_fid_network_fails_before_training(tmp_path, monkeypatch, capsys):
    p = tmp_path / "s.toml"
    p.write_text('name = "x"\nfid_impl = "pytorch-fid"\n')
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr("torch.hub._hub_dir", None)
    assert main(["run", "--scenario-file", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pt_inception-2015-12-05-6726825d.pth" in err[0]
    assert not list((tmp_path / "o").rglob("*.json"))
