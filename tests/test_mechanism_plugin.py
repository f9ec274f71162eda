"""A new DP mechanism end to end, touching only its module and one registry line.

``tests/apps/pld_mechanism.py`` defines ``central-dp-pld`` (Flower's fixed-clipping wrapper, its
noise calibrated and its spend accounted by a PLD accountant) and registers it; ``$FEDDP_PLUGINS``
brings it into every process that reads a scenario (the CLI, Flower's Ray workers). One tiny
scenario of it is trained in the simulation, accounted, recorded, attacked and summarised, and
every figure it prints is checked against an independent computation.
"""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

SCENARIO = """
[[scenario]]
name = "tiny-pld"
num_clients = 2
clients_per_round = 2
rounds = 2
max_train_images = 32
batch_size = 16
num_train_timesteps = 100
sample_steps = 2
fid_n_samples = 16
dp_mode = "central-dp-pld"
target_epsilon = 8.0
delta = 1e-3
attacks = ["mia-loss"]
"""


def bench(*args, plugins=True, timeout=1800):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests" / "apps"),
                                                       os.environ.get("PYTHONPATH", "")]))
    env.pop("FEDDP_PLUGINS", None)
    if plugins:
        env["FEDDP_PLUGINS"] = "pld_mechanism"
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_an_unimportable_plugin_is_a_one_line_error(tmp_path):
    env = dict(os.environ, FEDDP_PLUGINS="no_such_plugin_module")
    res = subprocess.run([sys.executable, "-m", "benchmark.cli", "list"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=120)
    assert res.returncode == 2 and "FEDDP_PLUGINS names 'no_such_plugin_module'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.slow  # one tiny federated run with FID and an attack, in a subprocess (~1-2 min)
def test_a_registered_mechanism_is_trained_accounted_recorded_attacked_and_summarised(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "apps"))
    try:
        from pld_mechanism import pld_epsilon
    finally:
        sys.path.pop(0)
    from privacy.accounting import client_level_epsilon

    (tmp_path / "pld.toml").write_text(SCENARIO)
    res = bench("run", "--scenario-file", str(tmp_path / "pld.toml"), "--out", str(tmp_path / "runs"),
                "--results", str(tmp_path / "results"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert any("round 2/2 done" in ln and "epsilon so far" in ln for ln in res.stderr.splitlines()), res.stderr

    (run,) = (tmp_path / "runs").glob("custom/tiny-pld-*/seed-0")
    privacy = json.loads((run / "history.json").read_text())["privacy"]
    metrics = json.loads((run / "metrics.json").read_text())
    # Trained and accounted by the plugin: its noise, its accountant, both releases charged.
    sigma = privacy["noise_multiplier"]
    assert privacy["mechanism"] == "central-dp-pld" and privacy["releases"] == 2
    assert privacy["accountant"] == metrics["accountant"] == "dp-accounting-pld-no-amplification"
    assert metrics["epsilon"] == privacy["epsilon"] == pld_epsilon(sigma, 2, 1e-3)
    assert 7.9 <= metrics["epsilon"] <= 8.0
    # A second accountant (Flower's RDP, an upper bound) at the same noise: more than the target,
    # which is why this mechanism's noise is smaller than central-dp's.
    assert client_level_epsilon(noise_multiplier=sigma, rounds=2, delta=1e-3, num_clients=2,
                                clients_per_round=2) > 8.0
    # Recorded at both units: the client claim, and one image at half the noise (it moves its
    # client's clipped update by up to 2C), which is what the audit holds the row to.
    units = {g["unit"]: g for g in privacy["guarantees"]}
    assert units["client"]["epsilon"] == metrics["epsilon"]
    assert units["image"]["epsilon"] == metrics["epsilon_audited"] == pld_epsilon(sigma / 2, 2, 1e-3)
    assert units["image"]["relation"].startswith("add/remove one image") and "up to 2C" in units["image"]["relation"]
    # Attacked: the membership attack scored, the audit gave a verdict.
    assert 0 <= metrics["mia_auc"] <= 1 and metrics["audit_verdict"] in ("passed", "inconclusive")

    # Summarised: the leaderboard row names the mechanism and its unit (from the registry).
    board = pd.read_csv(next((tmp_path / "results").rglob("leaderboard.csv")))
    (row,) = board.itertuples()
    assert (row.dp_mode, row.dp_level, row.accountant) == ("central-dp-pld", "client",
                                                          "dp-accounting-pld-no-amplification")
    assert row.epsilon == pytest.approx(metrics["epsilon"])
    again = bench("summarize", str(tmp_path / "runs"), "--results", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    # Without the plugin the mechanism is unknown: refused in one line, not summarised without its unit.
    blind = bench("summarize", str(tmp_path / "runs"), "--results", str(tmp_path / "blind"), plugins=False)
    assert blind.returncode == 2 and "central-dp-pld" in blind.stderr
    assert len(blind.stderr.strip().splitlines()) == 1, blind.stderr
