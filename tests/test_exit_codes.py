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
    assert main(["run", "--scenario", "privacy-iid-local-eps4", "--out", str(tmp_path / "o"),
                 "--results", str(tmp_path / "r")]) == 1
    assert "fail verification" in _one_line(capsys)
    assert not (tmp_path / "o" / "privacy").exists()


def test_failed_work_is_4(monkeypatch, capsys, tmp_path):
    from benchmark import runner

    def boom(*a, **k):
        raise runner.RunFailedError("smoke-iid seed 0: FID is not finite (nan)")

    monkeypatch.setattr(runner, "run_one", boom)
    monkeypatch.setattr(runner, "check_fid_available", lambda *a, **k: None)
    assert main(["run", "--scenario", "smoke-iid", "--out", str(tmp_path / "o"),
                 "--results", str(tmp_path / "r"), "--no-progress"]) == errors.EXIT_FAILED == 4
    assert "FID is not finite" in _one_line(capsys)


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


def test_failed_audit_is_3_after_the_suite(monkeypatch, capsys, tmp_path, fake_run):
    from benchmark import runner
    from benchmark.scenarios import get_scenario

    def fake(scenario, seed, opts):
        failed = scenario.dp_mode != "none"
        return fake_run(opts.out_dir, scenario, seed, metrics={
            "audit_failed": failed if failed else None, "epsilon_empirical_lb": 9.0 if failed else 0.0})

    monkeypatch.setattr(runner, "run_one", fake)
    monkeypatch.setattr(runner, "check_fid_available", lambda *a, **k: None)
    monkeypatch.setattr(runner, "verify_before_dp", lambda *a, **k: {})
    code = main(["run", "--scenario", "privacy-iid-local-eps4", "--out", str(tmp_path / "o"),
                 "--results", str(tmp_path / "r"), "--no-progress"])
    assert code == errors.EXIT_AUDIT_FAILED == 3
    err = capsys.readouterr().err
    assert "AUDIT FAILED" in err and (tmp_path / "r" / "privacy" / "leaderboard.csv").exists()
    assert get_scenario("privacy-iid-local-eps4").dp_mode == "local-dpsgd"
