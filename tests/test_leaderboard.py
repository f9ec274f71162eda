"""Leaderboards from run folders: aggregation over seeds, complete runs only, byte-stable CSVs."""

import json

import numpy as np
import pandas as pd
import pytest

from benchmark import leaderboard
from benchmark.leaderboard import COLUMNS, LeaderboardError, summarize
from benchmark.runner import RUN_FILES, run_dir
from benchmark.scenarios import get_scenario


def fake_run(root, scenario, seed, fid, complete=True, env=None):
    path = run_dir(root, scenario, seed)
    path.mkdir(parents=True)
    (path / "scenario.json").write_text(json.dumps(scenario.to_dict() | {"hash": scenario.hash, "seed": seed}))
    (path / "metrics.json").write_text(json.dumps({
        "fid": fid, "kid": fid / 1000, "fid_impl": "impl-x", "fid_n_samples": 100, "train_s": 2.0,
        "epsilon": None}))
    (path / "environment.json").write_text(json.dumps(env or {
        "device_name": "cpu", "git_sha": "abc", "torch": "2.14.1", "opacus": "1.6.0", "flwr": "1.42.0",
        "diffusers": "0.42.1"}))
    for f in RUN_FILES:
        if f not in ("scenario.json", "metrics.json", "environment.json") and (complete or f != "DONE"):
            (path / f).write_text("")
    return path


def test_mean_std_over_seeds_and_incomplete_runs_ignored(tmp_path):
    runs = tmp_path / "runs"
    s = get_scenario("smoke-iid")
    fake_run(runs, s, 0, 10.0)
    fake_run(runs, s, 1, 14.0)
    fake_run(runs, s, 2, 1000.0, complete=False)  # interrupted: must not count
    partial = run_dir(runs, s, 3).parent / ".seed-3.partial-123"
    partial.mkdir()
    (partial / "DONE").write_text("")
    (path,) = summarize(runs, tmp_path / "results")
    df = pd.read_csv(path)
    assert list(df.columns) == COLUMNS
    row = df.iloc[0]
    assert row["fid"] == pytest.approx(12.0)
    assert row["fid_std"] == pytest.approx(np.std([10.0, 14.0], ddof=1))
    assert row["n_seeds"] == 2 and row["seeds"] == "0 1"
    assert row["scenario_hash"] == s.hash and row["scale"] == "cpu" and row["fid_impl"] == "impl-x"


def test_changed_definition_is_a_separate_row(tmp_path):
    import dataclasses

    runs = tmp_path / "runs"
    s = get_scenario("smoke-iid")
    fake_run(runs, s, 0, 10.0)
    fake_run(runs, dataclasses.replace(s, rounds=5), 0, 30.0)
    df = pd.read_csv(summarize(runs, tmp_path / "results")[0])
    assert len(df) == 2 and sorted(df["fid"]) == [10.0, 30.0]


def test_summarize_twice_is_byte_identical_and_dtypes(tmp_path):
    runs = tmp_path / "runs"
    for name in ("smoke-iid", "smoke-dirichlet-0.5"):
        for seed in (0, 1):
            fake_run(runs, get_scenario(name), seed, 10.0 + seed + len(name) / 7)
    (a,) = summarize(runs, tmp_path / "r1")
    (b,) = summarize(runs, tmp_path / "r2")
    assert a.read_bytes() == b.read_bytes()
    df = pd.read_csv(a)
    assert df["fid"].dtype == np.float64 and df["num_clients"].dtype == np.int64
    assert df["n_seeds"].dtype == np.int64 and pd.api.types.is_string_dtype(df["scenario"])


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(LeaderboardError, match="does not exist"):
        summarize(tmp_path / "nope", tmp_path / "results")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeaderboardError, match="no complete runs"):
        summarize(tmp_path / "empty", tmp_path / "results")


def test_suite_filter(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, get_scenario("smoke-iid"), 0, 1.0)
    with pytest.raises(LeaderboardError, match="seed-paper"):
        summarize(runs, tmp_path / "results", suites=["seed-paper"])
    assert leaderboard.summarize(runs, tmp_path / "results", suites=["smoke"])
