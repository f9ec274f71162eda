"""A suite over several machines (issue 28, first part): ``bench run --shard K/N`` and ``bench
summarize`` over several run trees, refusing conflicting duplicates and naming missing runs."""

import json
import shutil

import pandas as pd
import pytest

from benchmark import runner
from benchmark.cli import main
from benchmark.leaderboard import merged_runs, missing_runs
from benchmark.suites import get_suite
from conftest import write_fake_run


def _plan(tmp_path, suite="privacy"):
    opts = runner.RunOptions(out_dir=tmp_path / "runs", device="cpu", data_root=None, resume=True,
                             progress=False, report=lambda line: None)
    return runner.plan(get_suite(suite, "cpu"), None, opts)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 10, 17])
def test_shards_are_disjoint_and_cover_the_plan(tmp_path, n):
    work = _plan(tmp_path, "cross-device")
    shards = [runner.shard(work, k, n) for k in range(1, n + 1)]
    keys = [(w.scenario.name, w.seed) for s in shards for w in s]
    assert sorted(keys) == sorted((w.scenario.name, w.seed) for w in work) and len(set(keys)) == len(keys)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_dry_run_shows_a_shards_runs_and_bad_shards_are_refused(tmp_path, capsys):
    base = ["run", "--suite", "privacy", "--out", str(tmp_path / "runs"), "--dry-run"]
    assert main(base + ["--shard", "2/3"]) == 0
    cap = capsys.readouterr()
    lines = [ln for ln in cap.out.splitlines() if ln.startswith("todo")]
    assert len(lines) == 5 and "shard 2/3: 5 of the 15 planned runs" in cap.err   # runs 1, 4, 7, 10, 13 of 0..14
    for bad in ("0/3", "4/3", "x", "1/0"):
        assert main(base + ["--shard", bad]) == 2
        assert "K/N" in capsys.readouterr().err


def _fake_suite(root, skip=()):
    for i, w in enumerate(_plan(root)):
        if i not in skip:
            write_fake_run(root / "runs", w.scenario, w.seed, fid=10.0 + i, attacks={"mia-loss": 0.1 * i})


def test_two_shard_trees_summarize_to_the_one_tree_leaderboard(tmp_path):
    """Shards 1/2 and 2/2 written into two trees, merged, equal the same runs in one tree, byte for
    byte; a copy of a run in both trees is the same result and is accepted."""
    one, a, b = tmp_path / "one", tmp_path / "a", tmp_path / "b"
    _fake_suite(one)
    for k, dest in ((1, a), (2, b)):
        for w in runner.shard(_plan(one), k, 2):
            src = w.path
            shutil.copytree(src, dest / src.relative_to(one / "runs"))
    some = next(p for p in merged_runs(a))
    shutil.copytree(some, b / some.relative_to(a))                    # the same run in both trees
    assert main(["summarize", str(one / "runs"), "--results", str(tmp_path / "r1")]) == 0
    assert main(["summarize", str(a), str(b), "--results", str(tmp_path / "r2")]) == 0
    for f in ("leaderboard.csv", "attacks.csv"):
        assert (tmp_path / "r1" / "privacy" / f).read_bytes() == (tmp_path / "r2" / "privacy" / f).read_bytes()


def test_a_conflicting_duplicate_is_refused_naming_it(tmp_path, capsys):
    _fake_suite(tmp_path)
    other = tmp_path / "other"
    run = merged_runs(tmp_path / "runs")[0]
    copy = other / run.relative_to(tmp_path / "runs")
    shutil.copytree(run, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    (copy / "metrics.json").write_text(json.dumps(metrics | {"fid": metrics["fid"] + 1.0}))   # another result
    assert main(["summarize", str(tmp_path / "runs"), str(other), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bench: error: two different results for run privacy/") and "metrics.json differ" in err


def test_an_incomplete_tree_names_its_missing_runs_and_is_not_published(tmp_path, capsys, monkeypatch):
    _fake_suite(tmp_path, skip=(3, 8))
    work = _plan(tmp_path)
    want = [f"{work[i].scenario.name} seed {work[i].seed}" for i in (3, 8)]
    assert missing_runs(tmp_path / "runs") == {"privacy": want}
    assert main(["summarize", str(tmp_path / "runs"), "--results", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert f"suite privacy is INCOMPLETE: 2 planned run(s) missing: {', '.join(want)}" in err
    board = pd.read_csv(tmp_path / "r" / "privacy" / "leaderboard.csv")
    assert len(board) == 5 and sorted(board.n_seeds) == [2, 2, 3, 3, 3]   # 5 scenarios x 3 seeds, 2 missing
    monkeypatch.setattr("benchmark.cli.PUBLISHED_RESULTS", str(tmp_path / "published"))
    assert main(["summarize", str(tmp_path / "runs"), "--publish"]) == 2
    assert "not publishing an incomplete suite" in capsys.readouterr().err
    assert not (tmp_path / "published").exists()
    _fake_suite(tmp_path / "rest", skip=tuple(i for i in range(len(work)) if i not in (3, 8)))
    assert missing_runs([tmp_path / "runs", tmp_path / "rest" / "runs"]) == {}


# ------------------------------------------------------------------ an existing Ray cluster
def test_a_wrong_ray_address_stops_the_run_in_one_line_before_training(tmp_path, capsys):
    code = main(["run", "--scenario", "grid-iid-nodp", "--out", str(tmp_path / "runs"), "--results",
                 str(tmp_path / "r"), "--no-progress", "--ray-address", "127.0.0.1:9"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and err[-1].startswith("bench: error: no Ray cluster at --ray-address 127.0.0.1:9")
    assert not any((tmp_path / "runs").rglob("DONE"))


@pytest.mark.slow  # starts a Ray head node and trains one small federation on it (about a minute)
def test_a_run_with_ray_address_trains_on_that_cluster(tmp_path, feddp_cache):
    """A real local Ray cluster (``ray start --head --block`` on loopback, its process group killed
    afterwards, so no other Ray on the machine is touched); ``bench run --ray-address`` trains on it,
    and the cluster's own state lists the Flower client actors that ran there."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray's temp dir must be short: its plasma socket lives at TEMP/session_<date>_<pid>/sockets/plasma_store,
    # and an AF_UNIX path over 107 bytes makes `ray start` die (pytest's tmp_path is too long for it).
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    head_log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={ray_tmp}"],
                            stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine starts Ray slowly; a dead head fails at once
        while True:
            assert head.poll() is None, "ray start --head exited: " + (tmp_path / "ray-head.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "ray head never listened: " + (tmp_path / "ray-head.log").read_text()[-2000:]
                time.sleep(0.5)
        scn = tmp_path / "tiny.toml"
        scn.write_text('name = "on-cluster"\nnum_clients = 2\nclients_per_round = 2\nrounds = 1\n'
                       'max_train_images = 32\nbatch_size = 16\nnum_train_timesteps = 100\nsample_steps = 2\n'
                       'fid_n_samples = 16\n')
        res = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--scenario-file", str(scn), "--out",
                              str(tmp_path / "runs"), "--results", str(tmp_path / "r"), "--no-progress",
                              "--ray-address", address], capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        # The GCS's own actor table (the state API would need the dashboard, which this head does not run).
        probe = ("import ray, json; import ray._private.state as st; ray.init(address=%r, log_to_driver=False); "
                 "print(json.dumps([a.get('ActorClassName', '') for a in st.actors().values()]))" % address)
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        classes = json.loads(out.stdout.strip().splitlines()[-1])
        assert any("ClientAppActor" in c for c in classes), classes
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        head_log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


# Columns that time a run or name where and when it ran: never equal between two runs of anything.
CIRCUMSTANCE = {"train_s", "date", "device", "git_sha"}
# Columns of a DP row measured on the trained model, which the mechanism's secret noise and
# Poisson sampling (privacy.noise: never seeded) make differ between any two runs.
SECRET_DRAWN = {"fid", "fid_std", "kid", "kid_std", "downstream_acc", "downstream_acc_std", "mia_auc", "mia_auc_std",
                "mia_best_attack", "mia_tpr_at_1pct_fpr", "mia_tpr_at_1pct_fpr_std", "mia_tpr_at_0_1pct_fpr",
                "mia_tpr_at_0_1pct_fpr_std", "inversion_psnr", "inversion_psnr_std", "inversion_ssim",
                "inversion_ssim_std", "epsilon_empirical_lb", "audit_verdict", "audit_failed", "epsilon_estimate"}


@pytest.mark.slow  # three small federations, two of them at once (a few minutes on 2 cores)
def test_two_concurrent_shards_make_the_one_process_leaderboard(tmp_path, feddp_cache):
    """Issue 28's must-be-true: a small suite (two non-DP scenarios and one local DP-SGD one, one
    seed) as shards 1/2 and 2/2 in two concurrent processes into one output tree; the merged
    leaderboard equals the one-process one in every column but the run's circumstances (wall time,
    date, device, commit), and for the DP row but what its secret noise and sampling drew (the
    trained model's measures: SECRET_DRAWN)."""
    import subprocess
    import sys

    scn = tmp_path / "two.toml"
    tiny = ('num_clients = 2\nclients_per_round = 2\nrounds = 1\nmax_train_images = 32\nbatch_size = 16\n'
            'num_train_timesteps = 100\nsample_steps = 2\nfid_n_samples = 16\n')
    scn.write_text(f'[[scenario]]\nname = "shard-a"\n{tiny}\n[[scenario]]\nname = "shard-b"\npartition = '
                   f'"dirichlet-0.5"\n{tiny}\n[[scenario]]\nname = "shard-dp"\ndp_mode = "local-dpsgd"\n'
                   f'target_epsilon = 8.0\ndelta = 1e-3\n{tiny}')
    bench = [sys.executable, "-m", "benchmark.cli", "run", "--scenario-file", str(scn), "--no-progress"]
    one = subprocess.run(bench + ["--out", str(tmp_path / "one"), "--results", str(tmp_path / "r1")],
                         capture_output=True, text=True, timeout=1200)
    assert one.returncode == 0, one.stderr[-3000:]
    procs = [subprocess.Popen(bench + ["--out", str(tmp_path / "shared"), "--results", str(tmp_path / f"s{k}"),
                                       "--shard", f"{k}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in (1, 2)]
    for p in procs:
        _out, err = p.communicate(timeout=1200)
        assert p.returncode == 0, err[-3000:]
        assert "shard" in err and "of the 3 planned runs" in err
    assert main(["summarize", str(tmp_path / "shared"), "--results", str(tmp_path / "r2")]) == 0
    a = pd.read_csv(tmp_path / "r1" / "custom" / "leaderboard.csv", dtype=str, keep_default_na=False)
    b = pd.read_csv(tmp_path / "r2" / "custom" / "leaderboard.csv", dtype=str, keep_default_na=False)
    assert len(a) == 3 and list(a["scenario"]) == list(b["scenario"])
    keep = [c for c in a.columns if c not in CIRCUMSTANCE]
    plain = a["dp_mode"] == "none"
    assert plain.sum() == 2 and a.loc[plain, keep].equals(b.loc[plain, keep])
    # The DP row: its plan, accounting and audit design recompute alike; what the noise drew differs.
    keep_dp = [c for c in keep if c not in SECRET_DRAWN]
    assert a.loc[~plain, keep_dp].equals(b.loc[~plain, keep_dp])
    assert a.loc[~plain, "epsilon"].astype(float).iloc[0] > 0
    assert not a.loc[~plain, "fid"].equals(b.loc[~plain, "fid"])  # two secret draws: the column is not a constant


def test_the_gpu_workflow_runs_a_shard_matrix_and_gates_the_merged_trees():
    import subprocess

    import yaml

    from conftest import REPO

    wf = yaml.safe_load((REPO / ".github" / "workflows" / "gpu-regression.yml").read_text())
    shards = wf["jobs"]["shard"]["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, int(wf["env"]["SHARDS"]) + 1))
    runs = [s["run"] for s in wf["jobs"]["shard"]["steps"] if "run" in s]
    assert any("SHARD=${{ matrix.shard }}/${{ env.SHARDS }} scripts/regression.sh" in r for r in runs)
    assert wf["jobs"]["gate"]["needs"] == "shard"
    assert any("MERGE=" in s.get("run", "") and "scripts/regression.sh" in s["run"] for s in wf["jobs"]["gate"]["steps"])
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "regression.sh")]).returncode == 0
