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
from benchmark.rundir import RUN_FILES

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


@pytest.mark.slow  # three `bench` subprocesses and a training run: the slow tier
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
    (round1,) = __import__("json").loads((run / "history.json").read_text())["rounds"]
    assert (round1["sampled"], round1["aggregated"], round1["dropped_error"], round1["dropped_timeout"],
            round1["rejected_invalid"], round1["problems"]) == (2, 2, 0, 0, 0, {})

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
    # The completed run is whole: every file parses.
    for name in ("scenario.json", "partition.json", "history.json", "metrics.json", "environment.json"):
        __import__("json").loads((first / name).read_text())
    __import__("torch").load(first / "global_model.pt", weights_only=True)
    assert np.load(first / "samples.npz")["images"].shape[0] == 16
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name and ".partial" not in str(p.parent)]
    # A leaderboard built now holds the complete run only, never the killed one.
    early = tmp_path / "early"
    assert bench("summarize", str(out), "--results", str(early)).returncode == 0
    assert list(pd.read_csv(early / "custom" / "leaderboard.csv")["scenario"]) == ["tiny-iid"]

    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 already complete" in res.stderr
    assert (first / "DONE").stat().st_mtime_ns == first_mtime  # not redone
    assert not list(out.rglob(".*partial*"))  # the killed run's leftovers were cleaned
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    df = pd.read_csv(results / "custom" / "leaderboard.csv")
    assert sorted(df["scenario"]) == ["tiny-dirichlet", "tiny-iid"] and df["fid"].notna().all()


@pytest.mark.parametrize("argv, match", [
    (["run", "--suite", "nope"], "unknown suite 'nope'"),
    (["run", "--scenario", "nope"], "unknown scenario 'nope'"),
    (["run", "--suite", "smoke", "--scale", "tpu"], "invalid choice: 'tpu'"),
    (["perf", "--model", "unet-tiny", "--batch-size", "0"], "positive integer"),
    (["runn"], "invalid choice: 'runn'"),
    (["run", "--suite", "smoke", "--device", "cuda"] if not __import__("torch").cuda.is_available()
     else ["run", "--suite", "smoke", "--device", "tpu"], "device"),
    (["run", "--scenario-file", "/nonexistent.toml"], "does not exist"),
    (["summarize", "/nonexistent-runs"], "does not exist"),
    (["run", "--suite", "privacy-controls", "--scale", "gpu"], "has no scenarios at scale 'gpu'"),
])
def test_bad_input_is_one_line(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: ") and match in err[0]


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


def test_dry_run_on_a_partly_done_folder_reports_and_never_refuses(tmp_path, capsys, fake_run):
    """One run complete, one half-written (no completion marker), a stale .partial folder: the dry
    run lists done / todo, exits 0, says a real run needs --resume, and touches nothing."""
    from benchmark.suites import get_suite

    iid, skew = get_suite("smoke")
    fake_run(tmp_path, iid, 0)
    fake_run(tmp_path, skew, 0, complete=False)
    stale = tmp_path / "smoke" / ".stale.partial-123"
    stale.mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["run", "--suite", "smoke", "--dry-run", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("done  smoke-iid seed 0") and out.splitlines()[1].startswith("todo")
    assert "1 complete, 1 to run (a real run needs --resume)" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


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


# ---------------------------------------------------------------- bad input, one case at a time, through `bench run`
def assert_refused(argv, capsys, match, out):
    """Exit 2, exactly one line on stderr, naming the problem; nothing under --out."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: "), err
    assert __import__("re").search(match, err[0]), err[0]
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


@pytest.mark.parametrize("body, match", [
    ('name = "x"\nnum_clientz = 3\n', "unknown field.*num_clientz"),
    ('name = "x"\nnum_clients = "4"\n', "field 'num_clients' must be int"),
    ('name = "x"\nrounds = 2.5\n', "field 'rounds' must be int"),
    ('name = "x"\ndp_mode = "local-dpsgd"\ntarget_epsilon = 0\ndelta = 1e-5\n', "target_epsilon > 0"),
    ('name = "x"\ndp_mode = "central-dp"\ntarget_epsilon = -1.0\ndelta = 1e-5\n', "target_epsilon > 0"),
    ('name = "x"\ndp_mode = "local-dpsgd"\ntarget_epsilon = 1\ndelta = 0.0\n', r"delta in \(0, 1\)"),
    ('name = "x"\ndp_mode = "local-dpsgd"\ntarget_epsilon = 1\ndelta = 1.5\n', r"delta in \(0, 1\)"),
    ('name = "x"\ndp_mode = "central-dp"\nnum_clients = 4\ntarget_epsilon = 1\ndelta = 0.25\n',
     "below 1/num_clients"),
    # sample level: delta must be below 1/n for each client's n images (256 images over 4 clients)
    ('name = "x"\ndp_mode = "local-dpsgd"\nmax_train_images = 256\ntarget_epsilon = 1\ndelta = 0.05\n',
     r"sample-level delta=0.05 must be below 1/n"),
    ('name = "x"\nnum_clients = 2\nclients_per_round = 3\n', "clients_per_round must be in"),
    ('name = "x"\nclients_per_round = 2\nmin_clients_per_round = 3\n', "min_clients_per_round must be in"),
    ('name = "x"\npartition = "dirichlet-0"\n', "alpha"),
    ('name = "x"\npartition = "dirichlet--0.5"\n', "alpha|dirichlet"),
    ('name = "x"\nnum_clients = 8\nclients_per_round = 2\nmax_train_images = 5\n', "fewer images than num_clients"),
    ('name = "x"\ndataset = "digits-embedded"\nnum_clients = 4000\nclients_per_round = 2\n', "clients"),
])
def test_bad_scenario_file_is_one_line_and_writes_nothing(tmp_path, capsys, body, match):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    out = tmp_path / "o"
    assert_refused(["run", "--scenario-file", str(p), "--out", str(out), "--no-progress"], capsys, match, out)


def _idx(arr, magic=None):
    import struct

    magic = magic if magic is not None else 0x00000800 | arr.ndim
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def _mnist_files(root, *, corrupt=None):
    d = root / "mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        images = _idx(rng.integers(0, 256, (n, 28, 28)), magic=0x0BADBEEF if corrupt == "magic" else None)
        if corrupt == "truncated":
            images = images[: len(images) // 2]
        (d / f"{prefix}-images-idx3-ubyte").write_bytes(images)
        (d / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(rng.integers(0, 10, (n,))))
    if corrupt == "missing":
        (d / "t10k-labels-idx1-ubyte").unlink()


@pytest.mark.parametrize("dataset, make, match", [
    ("mnist", lambda r: _mnist_files(r, corrupt="missing"), "t10k-labels-idx1-ubyte"),
    ("mnist", lambda r: _mnist_files(r, corrupt="truncated"), "idx3-ubyte: truncated"),
    ("mnist", lambda r: _mnist_files(r, corrupt="magic"), "magic"),
    ("medmnist:dermamnist", lambda r: (r / "medmnist").mkdir() or np.savez(
        r / "medmnist" / "dermamnist.npz", test_images=np.zeros((2, 28, 28), np.uint8)), "missing arrays"),
    ("cifar10", lambda r: None, "cifar-10-batches-py"),
])
def test_bad_dataset_files_are_one_line_and_write_nothing(tmp_path, capsys, dataset, make, match):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    p = tmp_path / "s.toml"
    p.write_text(f'name = "x"\ndataset = "{dataset}"\nnum_clients = 2\nmax_train_images = 20\n')
    out = tmp_path / "o"
    assert_refused(["run", "--scenario-file", str(p), "--out", str(out), "--data-root", str(root), "--no-progress"],
                   capsys, match, out)


@pytest.mark.slow
@pytest.mark.extended  # 3 min on 2 cores; in .ci/run test_shards' concurrent-shards test shows the same (two
#                        processes, the non-DP rows equal bit for bit), so this one is left to `tox -e slow`
def test_same_scenario_and_seed_give_the_same_metrics(tmp_path, feddp_cache):
    """The smoke suite on CPU, twice: identical models, samples and metrics (timings aside) for
    non-DP rows; a DP row is reproducible up to its DP noise, drawn from OS entropy:
    its partition and privacy columns agree, its models differ."""
    import json

    import torch

    runs = []
    for i in range(2):
        out = tmp_path / f"runs{i}"
        res = bench("run", "--suite", "smoke", "--out", str(out), "--results", str(tmp_path / f"results{i}"),
                    "--no-progress")
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(out)
    a_runs = sorted(p.relative_to(runs[0]) for p in runs[0].glob("smoke/*/seed-*"))
    assert len(a_runs) == 2 and a_runs == sorted(p.relative_to(runs[1]) for p in runs[1].glob("smoke/*/seed-*"))
    from privacy.mechanisms import get_mechanism

    timing = {"train_s", "sample_s", "fid_s"}
    # What a DP row's noise does not touch: its plan and the server's accounting.
    noise_free = {"dp_mode", "epsilon", "delta", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate",
                  "epsilon_target", "grad_sample_mode", "noise_multiplicity", "final_train_loss", "fid_n_samples",
                  "fid_n_real", "fid_reference", "fid_impl"}
    for rel in a_runs:
        a, b = runs[0] / rel, runs[1] / rel
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
        sa, sb = (torch.load(d / "global_model.pt", weights_only=True) for d in (a, b))
        assert (a / "partition.json").read_bytes() == (b / "partition.json").read_bytes()
        if get_mechanism(ma["dp_mode"]).private:
            assert {k: ma.get(k) for k in noise_free} == {k: mb.get(k) for k in noise_free}
            assert ma["final_train_loss"] is None  # no loss leaves a DP client
            assert any(not torch.equal(sa[k], sb[k]) for k in sa)  # the DP noise differs
            continue
        assert {k: v for k, v in ma.items() if k not in timing} == {k: v for k, v in mb.items() if k not in timing}
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert np.array_equal(np.load(a / "samples.npz")["images"], np.load(b / "samples.npz")["images"])
