"""benchmark.quiet: library noise is hidden and counted, our own lines and warnings pass, a warning
that matters becomes our own line; and the runner's progress lines (rounds, heartbeat)."""

import logging
import time
import warnings
from pathlib import Path

import pytest

from benchmark import quiet
from benchmark.suites import get_scenario

LIB = "/usr/lib/python3.11/site-packages/somelib/mod.py"
OURS = str(Path(quiet.__file__))


@pytest.fixture(autouse=True)
def not_verbose(monkeypatch):
    monkeypatch.delenv("BENCH_VERBOSE", raising=False)
    quiet._said.clear()


def test_classify():
    assert quiet.classify_warning("Optimal order is the largest alpha", LIB) == ""
    assert quiet.classify_warning("something of ours", OURS) is None
    assert quiet.classify_warning("Secure RNG turned off. This is fine", LIB) == \
        "DP noise: seeded from OS entropy (see README 'Determinism')"
    assert not quiet.ours(str(quiet.ROOT / ".venv" / "lib" / "x.py")) and not quiet.ours(None)


def _warn(msg, filename):
    warnings.warn_explicit(msg, UserWarning, filename, 1, module="m", registry={})


def test_hush_hides_counts_and_translates(capsys):
    said = []
    lib_logger = logging.getLogger("flwr")
    handler = logging.StreamHandler()  # stderr, as Flower's console handler
    lib_logger.addHandler(handler)
    try:
        before = quiet.hidden()
        with warnings.catch_warnings(record=True) as shown, quiet.hush(said.append):
            warnings.simplefilter("always")
            _warn("Optimal order is the largest alpha", LIB)
            _warn("fraction_evaluate is set to 0.0", LIB)
            _warn("our own warning", OURS)
            _warn("Secure RNG turned off.", LIB)
            _warn("Secure RNG turned off.", LIB)
            lib_logger.warning("DEPRECATED FEATURE: run_simulation")  # logged from this test file: ours
            logging.getLogger("flwr").handle(logging.makeLogRecord(
                {"name": "flwr", "levelno": logging.WARNING, "levelname": "WARNING", "pathname": LIB,
                 "msg": "fraction_evaluate is set to 0.0"}))
            logging.getLogger("flwr").handle(logging.makeLogRecord(
                {"name": "flwr", "levelno": logging.ERROR, "levelname": "ERROR", "pathname": LIB,
                 "msg": "a real error"}))
        err = capsys.readouterr().err
        assert quiet.hidden() - before == 5  # 2 warnings, 2 secure-RNG, 1 log record
        assert said == ["DP noise: seeded from OS entropy (see README 'Determinism')"]  # once
        assert [str(w.message) for w in shown] == ["our own warning"]
        assert "a real error" in err and "run_simulation" in err
        assert "Optimal order" not in err and "fraction_evaluate" not in err and "Secure RNG" not in err
        # Outside the block nothing is touched.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _warn("Optimal order is the largest alpha", LIB)
        assert len(caught) == 1 and not handler.filters
    finally:
        lib_logger.removeHandler(handler)


def test_verbose_shows_everything(monkeypatch, capsys):
    monkeypatch.setenv("BENCH_VERBOSE", "1")
    before = quiet.hidden()
    with warnings.catch_warnings(record=True) as shown, quiet.hush(lambda line: None):
        warnings.simplefilter("always")
        _warn("Optimal order is the largest alpha", LIB)
    assert quiet.hidden() == before and len(shown) == 1
    assert quiet.ray_init_args() == {}
    monkeypatch.delenv("BENCH_VERBOSE")
    assert quiet.ray_init_args() == {"log_to_driver": False}


def test_heartbeat_only_when_quiet():
    from benchmark.progress import Progress

    lines = []
    p = Progress(lines.append, "s seed 0", every=0.3)
    try:
        p.enter("score", "FID")
        time.sleep(0.8)
        p.say("a line of its own")
        n = len(lines)
        time.sleep(0.15)
        assert len(lines) == n  # a line just printed: no heartbeat yet
    finally:
        p.close()
    beats = [ln for ln in lines if "still in score" in ln]
    assert lines[0].startswith("s seed 0: score (FID)") and 1 <= len(beats) <= 3
    assert all(ln.startswith("s seed 0: ") for ln in lines)


def test_round_lines_show_what_is_public():
    from benchmark.progress import round_line

    nodp = get_scenario("grid-iid-nodp")
    assert round_line(nodp, 2, {"train_loss": 0.1234567}, 12.4) == "round 2/2 done (12 s), loss 0.1235"
    local = get_scenario("grid-iid-local-eps4")
    line = round_line(local, 1, {"train_loss": 0.5, "epsilon": 2.91}, 3.0)
    assert "epsilon so far 2.91 of 4" in line and "loss" not in line
    central = get_scenario("grid-iid-central-eps4")
    first = round_line(central, 1, {"dropped_error": 1, "epsilon": 2.5}, 1.0)
    assert "epsilon so far 2.5 of 4" in first and first.endswith("1 update(s) dropped")
    assert round_line(central, 1, {}, 1.0) == "round 1/2 done (1 s)"  # nothing public reported, nothing said


TINY_DP = """
[[scenario]]
name = "tiny-local"
num_clients = 2
clients_per_round = 2
rounds = 2
max_train_images = 32
batch_size = 16
num_train_timesteps = 100
sample_steps = 2
fid_n_samples = 16
dp_mode = "local-dpsgd"
target_epsilon = 8.0
delta = 1e-3
attacks = ["mia-loss"]

[[scenario]]
name = "tiny-central"
num_clients = 2
clients_per_round = 2
rounds = 1
max_train_images = 32
batch_size = 16
num_train_timesteps = 100
sample_steps = 2
fid_n_samples = 16
dp_mode = "central-dp"
target_epsilon = 8.0
delta = 1e-3
"""


@pytest.mark.slow  # two tiny federated runs in a subprocess
@pytest.mark.extended  # in .ci/run, scripts/terminal_check.py holds README command 1's own terminal to this rule
def test_a_run_prints_at_most_10_lines_that_are_not_the_tools(tmp_path):
    import subprocess
    import sys

    scn = tmp_path / "tiny.toml"
    scn.write_text(TINY_DP)
    env = {k: v for k, v in __import__("os").environ.items() if k != "BENCH_VERBOSE"}
    res = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--scenario-file", str(scn),
                          "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")],
                         capture_output=True, text=True, timeout=1800, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    foreign = [ln for ln in lines if not ln.startswith("bench: ")]
    assert len(foreign) <= 10, "\n".join(foreign)
    assert "\r" not in res.stderr  # not a TTY: no progress bars
    assert any("round 2/2 done" in ln and "epsilon so far" in ln for ln in lines)
    assert "== custom: 2 scenario(s)" in res.stdout and "leaderboard: " in res.stdout


def test_bench_account_hides_library_warnings(monkeypatch, capsys):
    """`bench account` printed Opacus' "Optimal order is the largest alpha" into the terminal."""
    from benchmark import cli
    from privacy import accounting

    def noisy(**kw):
        _warn("Optimal order is the largest alpha", LIB)
        return 0.66

    monkeypatch.setattr(accounting, "client_sampled_noise", noisy)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        rc = cli.main(["account", "--level", "client", "--epsilon", "10", "--delta", "1e-5", "--steps", "20",
                       "--population", "200", "--sample-rate", "0.1"])
    out = capsys.readouterr()
    assert rc == 0 and out.out.startswith("noise_multiplier = 0.66 for epsilon = 10")
    assert not [str(w.message) for w in shown] and "Optimal order" not in out.err


def test_terminal_check_counts_foreign_lines_after_the_tools_first_and_the_longest_silence(tmp_path):
    """scripts/terminal_check.py, which .ci/run applies to README command 1's captured terminal."""
    import subprocess
    import sys

    log = tmp_path / "log"
    log.write_text("\n".join([
        "0.0 Collecting torch",                        # the installer's: before the tool's first line
        "1.0 bench: 10 run(s), 0 already complete",
        "2.0 /x/flwr/simulation.py:12: DeprecationWarning: run_simulation",   # foreign
        "31.0 bench: privacy-iid-nodp seed 0: still in train (30 s)",
        "95.0 bench: finished privacy-iid-nodp seed 0",  # 64 s of silence
        "96.0 == privacy: 1 scenario(s)",
        "96.0 scenario  fid",                            # the summary table is the tool's
        "96.0 leaderboard: results/local/privacy/leaderboard.csv",
    ]) + "\n")
    script = Path(quiet.ROOT) / "scripts" / "terminal_check.py"
    res = subprocess.run([sys.executable, str(script), str(log)], capture_output=True, text=True)
    assert res.returncode == 1 and "1 line(s) not the tool's own" in res.stdout and "64 s" in res.stdout
    assert "foreign: /x/flwr/simulation.py:12: DeprecationWarning" in res.stdout
    res = subprocess.run([sys.executable, str(script), str(log), "--max-gap", "70"], capture_output=True, text=True)
    assert res.returncode == 0
    res = subprocess.run([sys.executable, str(script), str(log), "--max-gap", "70", "--max-foreign", "0"],
                         capture_output=True, text=True)
    assert res.returncode == 1
