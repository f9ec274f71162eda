"""``bench``'s exit statuses (benchmark/errors.py), one per kind of outcome, each with one line."""

import pytest

from benchmark import errors
from benchmark.cli import main


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err and err[-1].startswith("bench: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_argument_is_2(capsys):
    assert main(["list", "--scale", "tpu"]) == errors.EXIT_BAD_INPUT == 2
    assert "invalid choice" in _one_line(capsys)


def test_verification_mismatch_is_1(monkeypatch, capsys):
    class Failing:
        passed = False

        def table(self):
            return "hooks  grad rel err 1e-1"

    monkeypatch.setattr("privacy.verify.verify_dp", lambda *a, **k: Failing())
    assert main(["verify-dp", "--model", "unet-tiny"]) == errors.EXIT_MISMATCH == 1
    assert "do not match" in _one_line(capsys)


def test_verification_error_in_a_run_is_1_and_not_bad_input(monkeypatch, capsys, tmp_path):
    from benchmark import runner

    def gate(*a, **k):
        raise errors.VerificationError("per-sample gradients of unet-tiny (hooks) fail verification: x")

    monkeypatch.setattr(runner, "verify_before_dp", gate)
    monkeypatch.setattr(runner, "check_fid_available", lambda *a, **k: None)
    assert main(["run", "--scenario", "grid-iid-local-eps4", "--out", str(tmp_path / "o"),
                 "--results", str(tmp_path / "r")]) == 1
    assert "fail verification" in _one_line(capsys)
    assert not (tmp_path / "o" / "privacy-grid").exists()


def test_failed_work_is_4(monkeypatch, capsys, tmp_path):
    from benchmark import runner

    def boom(*a, **k):
        raise runner.RunFailedError("smoke-iid seed 0: FID is not finite (nan)")

    monkeypatch.setattr(runner, "run_one", boom)
    monkeypatch.setattr(runner, "check_fid_available", lambda *a, **k: None)
    assert main(["run", "--scenario", "smoke-iid", "--out", str(tmp_path / "o"),
                 "--results", str(tmp_path / "r"), "--no-progress"]) == errors.EXIT_FAILED == 4
    assert "FID is not finite" in _one_line(capsys)


def test_one_of_our_checks_firing_inside_a_run_is_4_not_bad_input(monkeypatch, capsys, tmp_path):
    """Our errors are ValueErrors (exit 2, bad input); one raised after a run has started (here an
    attack's check) is failed work: 4, with the run named, and no run folder left behind."""
    from attacks.base import AttackError
    from benchmark import runner

    def stages(*a, **k):
        raise AttackError("attack 'loss' needs held-out images")

    monkeypatch.setattr(runner, "_run_stages", stages)
    monkeypatch.setattr(runner, "check_fid_available", lambda *a, **k: None)
    assert main(["run", "--scenario", "smoke-iid", "--out", str(tmp_path / "o"),
                 "--results", str(tmp_path / "r"), "--no-progress"]) == errors.EXIT_FAILED
    assert _one_line(capsys) == "bench: error: smoke-iid seed 0: attack 'loss' needs held-out images"
    assert not (tmp_path / "o" / "smoke").exists()


def test_an_unexpected_exception_is_4_with_its_type(monkeypatch, capsys):
    def bug(args):
        raise KeyError("oops")

    monkeypatch.setattr("benchmark.cli.cmd_list", bug)
    from benchmark.cli import build_parser

    args = build_parser().parse_args(["list"])
    assert args.fn is bug
    assert main(["list"]) == 4
    assert "KeyError" in _one_line(capsys)


@pytest.mark.parametrize("exc, code", [
    (ValueError("x"), 4),                      # not ours: a bug, not bad input
    (errors.VerificationError("x"), 1),
    (KeyboardInterrupt(), 130),
])
def test_exit_code_rule(exc, code):
    assert errors.exit_code(exc) == code


def _audited_run(root, scenario, seed, fake_run, *, claimed: float, sigma: float, shift: float, m: int = 256):
    """A run folder whose audit is the referee's own (attacks.evaluate) on fabricated scores: 64 + 64
    natural candidates at chance, and m one-run canaries (fair coins) whose member scores are shifted
    by ``shift`` (a large shift: what a memorising, sigma = 0 model gives)."""
    import json

    import numpy as np

    from attacks.evaluate import audit_claims, audit_record, audit_tests

    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    tested = [("mia-loss", "natural", rng.normal(size=128), np.r_[np.ones(64, int), np.zeros(64, int)], "image"),
              ("mia-loss", "canary", included * shift + rng.normal(size=m), included.astype(int), "image")]
    tests = audit_tests(tested, delta=scenario.delta, seed=seed)
    privacy = {"epsilon": claimed, "noise_multiplier": sigma}
    rec = audit_record(tests, delta=scenario.delta, claimed=claimed, claims=audit_claims(scenario, privacy))
    keys = ("epsilon_empirical_lb", "audit_ceiling", "epsilon_audited", "audit_unit", "audit_verdict", "audit_failed")
    path = fake_run(root, scenario, seed, attacks={"mia-loss": 0.0},
                    metrics={k: rec[k] for k in keys} | {"epsilon": claimed, "noise_multiplier": sigma})
    record = json.loads((path / "attacks.json").read_text())
    (path / "attacks.json").write_text(json.dumps(record | {"audit": rec}, default=float))
    return path


def _run_suite(monkeypatch, tmp_path, scenario_name, fake):
    from benchmark import runner

    monkeypatch.setattr(runner, "run_one", fake)
    monkeypatch.setattr(runner, "check_fid_available", lambda *a, **k: None)
    monkeypatch.setattr(runner, "verify_before_dp", lambda *a, **k: {})
    return main(["run", "--scenario", scenario_name, "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"),
                 "--no-progress"])


def test_a_planted_mis_accounted_run_fails_the_audit_with_3(monkeypatch, capsys, tmp_path, fake_run):
    """Claimed epsilon 0.5 with sigma = 0: the one-run canaries are perfectly separated, the bound
    exceeds the claim at 95 % for the row, the board says failed, bench run exits 3 and says so."""
    import pandas as pd

    from benchmark.suites import get_scenario

    def fake(scenario, seed, opts):
        return _audited_run(opts.out_dir, scenario, seed, fake_run, claimed=0.5, sigma=0.0, shift=50.0)

    code = _run_suite(monkeypatch, tmp_path, "grid-iid-local-eps1", fake)
    assert code == errors.EXIT_AUDIT_FAILED == 3
    err = capsys.readouterr().err
    assert "AUDIT FAILED" in err and "exceeds the audited epsilon 0.5" in err and "INCONCLUSIVE" not in err
    row = pd.read_csv(tmp_path / "r" / "privacy-grid" / "leaderboard.csv").iloc[0]
    assert row.audit_verdict == "failed" and bool(row.audit_failed) and row.epsilon_empirical_lb > 2.5
    assert row.epsilon_audited == 0.5 and row.audit_unit == "image" and row.audit_ceiling >= row.epsilon_empirical_lb
    assert get_scenario("grid-iid-local-eps1").dp_mode == "local-dpsgd"


def test_a_correct_run_passes_and_an_untestable_claim_is_inconclusive_not_an_error(monkeypatch, capsys, tmp_path,
                                                                                   fake_run):
    """Chance-level scores: no failure. A central-DP row claiming epsilon 4 is audited at its image-level
    epsilon (8.98 at the published sigma), which 256 canaries cannot reach: INCONCLUSIVE, exit 0."""
    import pandas as pd

    def fake(scenario, seed, opts):
        return _audited_run(opts.out_dir, scenario, seed, fake_run, claimed=3.998204827, sigma=1.637695312,
                            shift=0.0)

    assert _run_suite(monkeypatch, tmp_path, "grid-iid-central-eps4", fake) == 0
    err = capsys.readouterr().err
    assert "INCONCLUSIVE audit" in err and "8.98" in err and "AUDIT FAILED" not in err
    row = pd.read_csv(tmp_path / "r" / "privacy-grid" / "leaderboard.csv").iloc[0]
    assert row.audit_verdict == "inconclusive" and not bool(row.audit_failed)
    assert row.epsilon_audited == pytest.approx(8.98, abs=0.01) and row.audit_ceiling < 8.98


def test_a_correct_testable_claim_passes_with_its_ceiling_printed(monkeypatch, capsys, tmp_path, fake_run):
    def fake(scenario, seed, opts):
        return _audited_run(opts.out_dir, scenario, seed, fake_run, claimed=0.9963923627, sigma=4.53125, shift=0.0)

    assert _run_suite(monkeypatch, tmp_path, "grid-iid-local-eps1", fake) == 0
    line = next(ln for ln in capsys.readouterr().err.splitlines() if "audit passed" in ln)
    ceiling = float(line.split("< ceiling ")[1].split()[0])
    assert "audited epsilon 0.996" in line and ceiling > 3.0   # 256 one-run canaries at 95 %


def test_the_exit_status_is_the_published_rows_verdict_not_a_second_rule(monkeypatch, capsys, tmp_path, fake_run):
    """Issue 25, 4d: one rule. The privacy suite's three DP rows on one seed; the epsilon-1 row's
    evidence (a claim of 0.5, member canaries shifted by 0.7) gives a bound of 0.587 at 95 % for the
    row but 0.474 at 95 % / 3, the old per-invocation Bonferroni level (at which bench run used to
    exit 0 beside a board saying "failed"). The board's verdict and the exit status now agree."""
    import pandas as pd

    from benchmark import runner
    from benchmark.suites import get_suite

    def fake(scenario, seed, opts):
        if scenario.dp_mode == "none":
            return fake_run(opts.out_dir, scenario, seed)
        bad = scenario.target_epsilon == 1.0
        return _audited_run(opts.out_dir, scenario, seed, fake_run, claimed=0.5 if bad else scenario.target_epsilon,
                            sigma=1.0, shift=0.7 if bad else 0.0)

    monkeypatch.setattr(runner, "run_one", fake)
    monkeypatch.setattr(runner, "check_fid_available", lambda *a, **k: None)
    monkeypatch.setattr(runner, "verify_before_dp", lambda *a, **k: {})
    code = main(["run", "--suite", "privacy", "--seeds", "0", "--out", str(tmp_path / "o"), "--results",
                 str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    board = pd.read_csv(tmp_path / "r" / "privacy" / "leaderboard.csv").set_index("scenario")
    failed = sorted(board.index[board.audit_verdict == "failed"])
    assert failed == ["privacy-iid-local-eps1"] and board.loc[failed[0], "epsilon_empirical_lb"] == pytest.approx(
        0.587, abs=0.005)
    assert code == errors.EXIT_AUDIT_FAILED
    assert "AUDIT FAILED: privacy/privacy-iid-local-eps1: empirical epsilon lower bound 0.587" in err
    assert "bench: error: 1 row(s) failed the empirical privacy audit (3 audited, each at 95 % for the row)" in err
    assert len(get_suite("privacy", "cpu")) == len(board)
