"""bench compare: the regression gate between two leaderboards (fake run folders, no training)."""

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from benchmark import compare as cmp
from benchmark.cli import main
from benchmark.leaderboard import read_leaderboard, summarize
from benchmark.suites import get_scenario
from conftest import write_fake_run

SCENARIOS = ("grid-iid-nodp", "grid-iid-local-eps4", "grid-iid-central-eps4")


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A leaderboard of three scenarios x three seeds, with attacks on the DP rows."""
    tmp = tmp_path_factory.mktemp("board")
    for i, name in enumerate(SCENARIOS):
        s = get_scenario(name)
        for seed in (0, 1, 2):
            write_fake_run(tmp / "runs", s, seed, fid=100.0 + 10 * i + seed,
                           metrics={"downstream_acc": 0.8 + seed / 100},
                           attacks=None if s.dp_mode == "none" else {"mia-loss": 0.2 + seed / 50})
    (path,) = summarize(tmp / "runs", tmp / "results", report=False)
    return path


def edited(board, tmp_path, scenario, **changes):
    df = pd.read_csv(board, dtype=str, keep_default_na=False)
    row = df.index[df["scenario"] == scenario][0]
    for col, fn in changes.items():
        df.loc[row, col] = fn(df.loc[row, col])
    path = tmp_path / "new.csv"
    path.write_text(df.to_csv(index=False, lineterminator="\n"))
    return path


def run_cli(capsys, *argv):
    code = main(["compare", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_itself_exits_zero(board, capsys):
    code, out, err = run_cli(capsys, board, board, "--all")
    assert code == 0, out + err
    assert "no regression in 3 scenario(s)" in out and "WORSE" not in out and "CHANGED" not in out
    assert "fid ↓" in out and "epsilon" in out  # --all lists the checks


def test_fid_50pct_worse_fails_and_names_the_row(board, tmp_path, capsys):
    new = edited(board, tmp_path, "grid-iid-nodp", fid=lambda v: repr(float(v) * 1.5))
    code, out, err = run_cli(capsys, board, new)
    assert code == 1
    bad = [ln for ln in out.splitlines() if "WORSE" in ln]
    assert len(bad) == 1 and bad[0].startswith("grid-iid-nodp") and "fid" in bad[0]
    assert err.strip().splitlines()[-1].startswith("bench: regression: 1 regression(s): grid-iid-nodp fid")
    # A DP row's band is never below its noise floor (FID 75%), its spread notwithstanding: 50%
    # worse passes, twice as bad fails.
    assert run_cli(capsys, board, edited(board, tmp_path, "grid-iid-local-eps4", fid=lambda v: repr(float(v) * 1.5)))[0] == 0
    assert run_cli(capsys, board, edited(board, tmp_path, "grid-iid-local-eps4", fid=lambda v: repr(float(v) * 2)))[0] == 1
    # 50% better is reported, never failed.
    better = edited(board, tmp_path, "grid-iid-nodp", fid=lambda v: repr(float(v) * 0.5))
    code, out, _ = run_cli(capsys, board, better)
    assert code == 0 and "better" in out


@pytest.mark.parametrize("factor", [1.0002, 0.999])
def test_changed_epsilon_fails_either_way(board, tmp_path, capsys, factor):
    new = edited(board, tmp_path, "grid-iid-central-eps4", epsilon=lambda v: repr(float(v) * factor))
    code, out, err = run_cli(capsys, board, new)
    assert code == 1
    (line,) = [ln for ln in out.splitlines() if "CHANGED" in ln]
    assert line.startswith("grid-iid-central-eps4") and line.split()[1] == "epsilon"


def test_small_changes_inside_the_band_pass(board, tmp_path):
    # FID +5% (inside the 10% margin), AUC +0.01 (inside 0.02), epsilon within 1e-5 relative.
    new = edited(board, tmp_path, "grid-iid-local-eps4", fid=lambda v: repr(float(v) * 1.05),
                 mia_auc=lambda v: repr(float(v) + 0.01), epsilon=lambda v: repr(float(v) * (1 + 1e-5)))
    found = cmp.compare_files(board, new)
    assert not [f for f in found if f.failing]


def test_band_from_the_seeds_spread(board):
    df = read_leaderboard(board)
    b = df[df["scenario"] == "grid-iid-nodp"].iloc[0]  # no DP: the band is the spread's (no noise floor)
    n = b.copy()
    # FID std 1 over 3 seeds on both sides: 3 sigma = 3 * sqrt(2/3) = 2.45, below the margin
    # (10% of 101), which is the floor: a 9.9% change passes ...
    n["fid"] = b["fid"] + 0.099 * b["fid"]
    assert [f.status for f in cmp.compare_rows(b, n, sigmas=3, gates=cmp.GATED) if f.check.startswith("fid")] == ["ok"]
    # ... and with a wide spread the band grows beyond the margin.
    b2, n2 = b.copy(), b.copy()
    b2["fid_std"] = n2["fid_std"] = 20.0  # SE = 20 * sqrt(2/3) = 16.3; 3 sigma = 49
    n2["fid"] = b["fid"] + 40.0
    assert [f.status for f in cmp.compare_rows(b2, n2, sigmas=3, gates=cmp.GATED) if f.check.startswith("fid")] == ["ok"]
    n2["fid"] = b["fid"] + 50.0
    (f,) = [f for f in cmp.compare_rows(b2, n2, sigmas=3, gates=cmp.GATED) if f.check.startswith("fid")]
    assert f.status == "WORSE" and f.band == "±49"
    # One seed on a side: the other side's spread stands for both (3 * 20 * sqrt(1/3 + 1) = 69) ...
    b3, n3 = b2.copy(), n2.copy()
    n3["fid_std"], n3["n_seeds"], n3["fid"] = float("nan"), 1, b["fid"] + 60.0
    (f,) = [f for f in cmp.compare_rows(b3, n3, sigmas=3, gates=cmp.GATED) if f.check.startswith("fid")]
    assert f.status == "ok" and f.band == "±69.3"
    # ... one seed on both sides: the margin alone (a row without DP noise) ...
    b3["fid_std"], b3["n_seeds"], n3["fid"] = float("nan"), 1, b["fid"] * 1.11
    b3["dp_mode"] = n3["dp_mode"] = "none"
    (f,) = [f for f in cmp.compare_rows(b3, n3, sigmas=3, gates=cmp.GATED) if f.check.startswith("fid")]
    assert f.status == "WORSE" and f.band == f"±{0.1 * b['fid']:.3g}"
    # ... and the noise floor (75% for FID) for a DP row, whose noise no run replays ...
    b3["dp_mode"] = n3["dp_mode"] = "central-dp"
    (f,) = [f for f in cmp.compare_rows(b3, n3, sigmas=3, gates=cmp.GATED) if f.check.startswith("fid")]
    assert f.status == "ok" and f.band == f"±{0.75 * b['fid']:.3g}"
    # ... also where both sides have a spread: two seeds cannot estimate a DP row's spread.
    b2["dp_mode"] = n2["dp_mode"] = "local-dpsgd"
    (f,) = [f for f in cmp.compare_rows(b2, n2, sigmas=3, gates=cmp.GATED) if f.check.startswith("fid")]
    assert f.status == "ok" and f.band == f"±{0.75 * b['fid']:.3g}"


def test_stronger_attack_failed_audit_missing_metric_and_row(board, tmp_path, capsys):
    new = edited(board, tmp_path, "grid-iid-local-eps4", mia_auc=lambda v: repr(float(v) + 0.2),
                 audit_failed=lambda v: "True")
    code, out, _ = run_cli(capsys, board, new)
    assert code == 1
    assert any(ln.startswith("grid-iid-local-eps4") and "mia_auc" in ln and "WORSE" in ln for ln in out.splitlines())
    assert any(ln.startswith("grid-iid-local-eps4") and "AUDIT FAILED" in ln for ln in out.splitlines())

    new = edited(board, tmp_path, "grid-iid-central-eps4", inversion_psnr=lambda v: "")
    code, out, _ = run_cli(capsys, board, new)
    assert code == 1 and any("inversion_psnr" in ln and "MISSING" in ln for ln in out.splitlines())

    df = pd.read_csv(board, dtype=str, keep_default_na=False)
    dropped = tmp_path / "dropped.csv"
    dropped.write_text(df[df["scenario"] != "grid-iid-nodp"].to_csv(index=False, lineterminator="\n"))
    code, out, _ = run_cli(capsys, board, dropped)
    assert code == 1 and any(ln.startswith("grid-iid-nodp") and "MISSING" in ln for ln in out.splitlines())
    code, out, _ = run_cli(capsys, dropped, board)  # a new row alone is no regression
    assert code == 0 and any(ln.startswith("grid-iid-nodp") and "new" in ln for ln in out.splitlines())
    # ... unless its audit failed.
    failed = edited(board, tmp_path, "grid-iid-nodp", audit_failed=lambda v: "True")
    code, out, _ = run_cli(capsys, dropped, failed)
    assert code == 1 and any(ln.startswith("grid-iid-nodp") and "AUDIT FAILED" in ln for ln in out.splitlines())


def test_changed_definition_or_fid_impl_is_not_compared(board, tmp_path, capsys):
    s = get_scenario("grid-iid-nodp")
    new = edited(board, tmp_path, "grid-iid-nodp",
                 scenario_hash=lambda v: dataclasses.replace(s, rounds=7).hash, fid=lambda v: "1e9")
    code, out, _ = run_cli(capsys, board, new)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("grid-iid-nodp")]
    assert code == 1 and "scenario_hash" in line and "CHANGED" in line and "fid" not in line.split()[1]
    new = edited(board, tmp_path, "grid-iid-nodp", fid_impl=lambda v: "other-extractor", fid=lambda v: "1e9")
    code, out, _ = run_cli(capsys, board, new)
    assert code == 1 and "fid_impl" in out and "WORSE" not in out


def test_markdown_table(board, tmp_path, capsys):
    new = edited(board, tmp_path, "grid-iid-local-eps4", fid=lambda v: repr(float(v) * 2))
    code, out, _ = run_cli(capsys, board, new, "--markdown")
    assert code == 1 and out.startswith("| scenario | check |") and "**WORSE**" in out


@pytest.mark.parametrize("argv, match", [
    (["compare", "/nonexistent.csv", "/nonexistent2.csv"], "does not exist"),
    (["compare", "BOARD", "BOARD", "--margin", "fid"], "METRIC=VALUE"),
    (["compare", "BOARD", "BOARD", "--margin", "fid=lots"], "not a number"),
    (["compare", "BOARD", "OLD"], "schema version 1"),
    (["compare", "BOARD", "OTHER"], "no scenario in common"),
    (["compare", "BOARD", "MANGLED"], "could not convert string to float: '7x3.2'"),
])
def test_cannot_compare_is_one_line_exit_2(board, tmp_path, capsys, argv, match):
    old = tmp_path / "old.csv"
    old.write_text("suite,scenario,fid\nprivacy,x,1.0\n")
    mangled = edited(board, tmp_path, "grid-iid-nodp", fid=lambda v: "7x3.2").rename(tmp_path / "mangled.csv")
    other = edited(board, tmp_path, "grid-iid-nodp")
    df = pd.read_csv(other, dtype=str, keep_default_na=False)
    df["scale"] = "gpu"
    other.write_text(df.to_csv(index=False, lineterminator="\n"))
    paths = {"BOARD": str(board), "OLD": str(old), "OTHER": str(other), "MANGLED": str(mangled)}
    assert main([paths.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: ") and match in err[0]


def test_margin_override(board, tmp_path):
    new = edited(board, tmp_path, "grid-iid-nodp", fid=lambda v: repr(float(v) * 1.05))
    assert not [f for f in cmp.compare_files(board, new) if f.failing]
    found = cmp.compare_files(board, new, margins={"fid": (0.01, True)})
    assert [(f.scenario, f.status) for f in found if f.failing] == [("grid-iid-nodp", "WORSE")]


# The CPU grid as published at c0c1ca9 (one seed per row, central-DP rows; tests/data/).
PUBLISHED = Path(__file__).resolve().parent / "data" / "grid-cpu-c0c1ca9-leaderboard.csv"
NOISY = ("fid", "kid", "downstream_acc", "mia_auc", "mia_tpr_at_1pct_fpr", "mia_tpr_at_0_1pct_fpr",
         "inversion_psnr", "inversion_ssim", "epsilon_empirical_lb", "mia_best_attack")


@pytest.mark.parametrize("shift", [1, 2])
def test_central_dp_noise_of_the_published_size_passes(tmp_path, capsys, shift):
    """A fresh run of the same commit differs on central-DP rows by the server's secret noise (one
    seed, no spread): give each central row the metrics of another epsilon of the same partition,
    the published leaderboard's own spread, and the gate stays quiet."""
    df = pd.read_csv(PUBLISHED, dtype=str, keep_default_na=False)
    for part in sorted(set(df["partition"])):
        idx = df.index[(df["partition"] == part) & (df["dp_mode"] == "central-dp")].tolist()
        assert len(idx) == 3 and all(df.loc[i, "n_seeds"] == "1" for i in idx)
        rotated = idx[shift:] + idx[:shift]
        df.loc[idx, list(NOISY)] = df.loc[rotated, list(NOISY)].to_numpy()
    new = tmp_path / "fresh.csv"
    new.write_text(df.to_csv(index=False, lineterminator="\n"))
    assert not read_leaderboard(new).equals(read_leaderboard(PUBLISHED))
    code, out, err = run_cli(capsys, PUBLISHED, new)
    assert code == 0, out + err
    assert "no regression in 14 scenario(s)" in out


def test_noise_floor_hides_no_real_regression(tmp_path):
    """The floor is for secret noise only: the same FID change fails a one-seed no-DP row, and a
    central row still fails beyond its floor."""
    df = pd.read_csv(PUBLISHED, dtype=str, keep_default_na=False)
    nodp = df.index[df["scenario"] == "privacy-iid-nodp"][0]
    central = df.index[df["scenario"] == "privacy-iid-central-eps4"][0]
    df.loc[nodp, "fid"] = repr(float(df.loc[nodp, "fid"]) * 1.3)
    df.loc[central, "fid"] = repr(float(df.loc[central, "fid"]) * 1.8)
    df.loc[central, "inversion_psnr"] = repr(float(df.loc[central, "inversion_psnr"]) + 5)  # inside 10 dB
    new = tmp_path / "new.csv"
    new.write_text(df.to_csv(index=False, lineterminator="\n"))
    bad = {(f.scenario, f.check.split()[0]) for f in cmp.compare_files(PUBLISHED, new) if f.failing}
    assert bad == {("privacy-iid-nodp", "fid"), ("privacy-iid-central-eps4", "fid")}
    assert cmp.secret_noise("central-dp") and not cmp.secret_noise("none")


def test_a_one_seed_run_is_banded_by_the_other_sides_spread(tmp_path):
    """CI runs the suite with --seeds 0 against the published two-seed rows: the published spread
    stands for both sides (a change of 0.7 std passes where the margin alone would fail it), and a
    change beyond 3 standard errors of that spread still fails."""
    from benchmark.schema import Gate

    gate = Gate(False, 0.02, False)
    base = pd.Series({"downstream_acc": 0.87, "downstream_acc_std": 0.04, "n_seeds": 2, "dp_mode": "none"})
    one = pd.Series({"downstream_acc": 0.87 - 0.7 * 0.04, "downstream_acc_std": float("nan"), "n_seeds": 1,
                     "dp_mode": "none"})
    band = cmp._band(gate, base, one, "downstream_acc", 3.0)
    assert band == pytest.approx(3 * 0.04 * (1 / 2 + 1) ** 0.5)
    assert cmp._band(gate, one, base, "downstream_acc", 3.0) == pytest.approx(band)
    both_one = base.copy()
    both_one["downstream_acc_std"], both_one["n_seeds"] = float("nan"), 1
    assert cmp._band(gate, both_one, one, "downstream_acc", 3.0) == 0.02  # no spread anywhere: the margin


# The privacy suite as published: the baseline `.ci/run` gates its fresh one-seed run against.
PRIVACY = Path(__file__).resolve().parents[1] / "results" / "privacy" / "leaderboard.csv"
EPS1_DRAWS = Path(__file__).resolve().parent / "data" / "privacy-eps1-draws.csv"
# The board as published when the CI draw below failed the earlier floor (bee4fc9, schema 4): the
# gate's band follows the baseline's seeds, so that history is told against that baseline.
PRIVACY_BEE4FC9 = Path(__file__).resolve().parent / "data" / "privacy-bee4fc9-leaderboard.csv"
MIA = ("mia_auc", "mia_tpr_at_1pct_fpr", "mia_tpr_at_0_1pct_fpr")


def one_seed_board(tmp_path, rows: dict[str, dict[str, float]], base=PRIVACY):
    """The published privacy leaderboard (or ``base``) with the named rows turned into one-seed runs
    (no spread) carrying the given metrics, as `.ci/run`'s `--seeds 0` writes them."""
    df = pd.read_csv(base, dtype=str, keep_default_na=False)
    for scenario, values in rows.items():
        i = df.index[df["scenario"] == scenario][0]
        df.loc[i, [c for c in df.columns if c.endswith("_std")]] = ""
        df.loc[i, "n_seeds"] = "1"
        for col, v in values.items():
            df.loc[i, col] = repr(float(v))
    path = tmp_path / "fresh.csv"
    path.write_text(df.to_csv(index=False, lineterminator="\n"))
    return path


def eps1_draws() -> list[dict[str, float]]:
    df = pd.read_csv(EPS1_DRAWS, comment="#")
    return [{k: v for k, v in row.items() if k not in ("source", "seed") and pd.notna(v)}
            for row in df.to_dict("records")]


@pytest.mark.parametrize("draw", range(12))
def test_every_measured_epsilon1_draw_passes_the_gate(tmp_path, draw):
    """Twelve runs of the privacy suite's epsilon-1 row (fresh DP noise each; one of them CI's, whose
    accuracy of 0.145 failed the earlier floor of 0.10) each pass against the published row."""
    draws = eps1_draws()
    assert len(draws) == 12
    new = one_seed_board(tmp_path, {"privacy-iid-local-eps1": draws[draw]})
    assert not [f for f in cmp.compare_files(PRIVACY, new) if f.failing]


def test_the_ci_draw_failed_the_earlier_accuracy_floor(tmp_path, monkeypatch):
    ci = eps1_draws()[-1]
    assert ci["downstream_acc"] == 0.145
    g = cmp.GATED["downstream_acc"]
    monkeypatch.setitem(cmp.GATED, "downstream_acc", dataclasses.replace(g, noise_floor=0.10))
    new = one_seed_board(tmp_path, {"privacy-iid-local-eps1": ci}, base=PRIVACY_BEE4FC9)
    bad = [(f.scenario, f.check.split()[0]) for f in cmp.compare_files(PRIVACY_BEE4FC9, new) if f.failing]
    assert bad == [("privacy-iid-local-eps1", "downstream_acc")]


def chance_draws(n: int, seed: int = 0):
    """A DP row's membership columns at chance: the best of three attacks by AUC (taken as
    independent, the worst case for the maximum) at the privacy suite's 128 members and 128
    non-members, each scored by the real metric code."""
    import numpy as np

    from attacks.base import mia_metrics

    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(128), np.zeros(128)].astype(bool)
    out = []
    for _ in range(n):
        best = max((mia_metrics(rng.standard_normal(256), labels) for _ in range(3)), key=lambda m: m["auc"])
        out.append((best["auc"], best["tpr_at_1pct_fpr"], best["tpr_at_0_1pct_fpr"]))
    return np.array(out)


def chance_failure_rates(draws) -> dict[tuple[str, str], float]:
    base = read_leaderboard(PRIVACY).set_index("scenario", drop=False)
    rates = {}
    for name, b in base.iterrows():
        if not cmp.secret_noise(b["dp_mode"]):
            continue
        one = b.copy()
        one["n_seeds"] = 1
        for j, metric in enumerate(MIA):
            one[f"{metric}_std"] = float("nan")
            band = cmp._band(cmp.GATED[metric], b, one, metric, 3.0)
            rates[name, metric] = float((draws[:, j] > float(b[metric]) + band).mean())
    return rates


def test_chance_attack_draws_pass_the_floors(monkeypatch):
    """The published DP rows' membership columns are chance draws (their AUC 0.51, TPR 0.01-0.02):
    a fresh chance draw must pass the gate but for odds under 1 in 500 per row and column. The floors
    of 0.08 / 0.05 / 0.05 this replaced failed about one in seven `.ci/run`s on chance alone."""
    draws = chance_draws(6000)
    assert 0.52 < draws[:, 0].mean() < 0.54  # the published DP rows' level: the model is right
    rates = chance_failure_rates(draws)
    assert len(rates) == 9 and max(rates.values()) <= 0.002, rates
    for metric, floor in zip(MIA, (0.08, 0.05, 0.05)):
        monkeypatch.setitem(cmp.GATED, metric, dataclasses.replace(cmp.GATED[metric], noise_floor=floor))
    assert sum(chance_failure_rates(draws).values()) > 0.08


def test_a_dp_row_that_breaks_still_fails(tmp_path):
    """The floors pass chance; they do not pass a DP row that leaks like the no-DP row, nor one whose
    accuracy falls to chance from epsilon 10's or 4's."""
    nodp = read_leaderboard(PRIVACY).set_index("scenario").loc["privacy-iid-nodp"]
    new = one_seed_board(tmp_path, {"privacy-iid-local-eps10": {m: nodp[m] for m in MIA},
                                    "privacy-iid-local-eps4": {"downstream_acc": 0.1}})
    bad = {(f.scenario, f.check.split()[0]) for f in cmp.compare_files(PRIVACY, new) if f.failing}
    assert {("privacy-iid-local-eps10", "mia_auc"), ("privacy-iid-local-eps4", "downstream_acc")} <= bad
    assert {s for s, _ in bad} == {"privacy-iid-local-eps10", "privacy-iid-local-eps4"}
    assert {c for s, c in bad if s == "privacy-iid-local-eps4"} == {"downstream_acc"}


# ------------------------------------------------------------------ what each gate can catch (power)
README = Path(__file__).resolve().parents[1] / "results" / "README.md"


def flag_rate(gate, b: dict, n: dict, metric: str, shift: float, var_base: float, var_new: float,
              draws: int = 1000, seed: int = 0) -> float:
    """How often the gate itself (compare_rows) fails ``metric`` when the two rows' means are drawn
    around the base value, the new one moved by ``shift`` in the worse direction."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = float(b[metric])
    worse = 1.0 if gate.lower_is_better else -1.0
    base_means = x + rng.standard_normal(draws) * var_base ** 0.5
    new_means = x + worse * shift + rng.standard_normal(draws) * var_new ** 0.5
    flagged = 0
    for xb, xn in zip(base_means, new_means):
        found = cmp.compare_rows({**b, metric: xb}, {**n, metric: xn}, sigmas=3.0, gates={metric: gate})
        flagged += [f.status for f in found if f.check.split()[0] == metric] == ["WORSE"]
    return flagged / draws


def published_row(name: str) -> dict:
    return read_leaderboard(PRIVACY).set_index("scenario", drop=False).loc[name].to_dict()


# (scenario, metric, a one-seed new side): the band set by the seeds' spread, by a relative margin,
# by a relative noise floor (DP, secret noise), by an absolute noise floor.
# (row, metric, what sets its band, the row's published columns overridden): each kind of band on
# the published three-seed board; the margin case shrinks the no-DP row's FID spread (the board
# has no margin-bound column since it runs three seeds).
POWER_CASES = [("privacy-iid-nodp", "inversion_psnr", "spread", {}), ("privacy-iid-nodp", "fid", "spread", {}),
               ("privacy-iid-nodp", "fid", "margin", {"fid_std": 1.0}),
               ("privacy-iid-local-eps4", "fid", "floor", {}),
               ("privacy-iid-local-eps1", "downstream_acc", "spread", {})]


@pytest.mark.parametrize("scenario, metric, kind, override", POWER_CASES,
                         ids=[f"{a}-{b}-{c}" for a, b, c, _ in POWER_CASES])
def test_detectable_regression_by_simulation(scenario, metric, kind, override):
    """The stated regression is flagged by the gate itself about 95% of the time (1000 draws of both
    means under the model: each side's mean normal with its seeds' spread, on a DP row the secret
    noise its floor stands for), half of it far less often, and no change almost never."""
    import math

    gate = cmp.GATED[metric]
    b = published_row(scenario) | override
    n = {**b, "n_seeds": 1, f"{metric}_std": float("nan")}
    p = cmp.gate_power(gate, pd.Series(b), pd.Series(n), metric)
    scale = abs(float(b[metric])) if gate.relative else 1.0
    sd = float(b[f"{metric}_std"])
    if cmp.secret_noise(b["dp_mode"]):  # the per-run spread the floor stands for
        sd = max(sd, cmp.secret_sd(gate) * scale)
    var_base, var_new = sd ** 2 / int(b["n_seeds"]), sd ** 2
    assert p.shift is not None and p.shift > p.band
    spread = 3 * math.sqrt(float(b[f"{metric}_std"]) ** 2 * (1 / int(b["n_seeds"]) + 1))
    want = {"spread": spread, "margin": gate.margin * scale,
            "floor": (gate.noise_floor or 0.0) * scale if cmp.secret_noise(b["dp_mode"]) else 0.0}
    assert p.band == pytest.approx(want[kind]) and p.band == pytest.approx(max(want.values()))  # the named case
    assert 0.93 <= flag_rate(gate, b, n, metric, p.shift, var_base, var_new) <= 0.975
    # At the band itself the gate flags half of them; with no change, almost none.
    assert 0.4 <= flag_rate(gate, b, n, metric, p.band, var_base, var_new, seed=1) <= 0.6
    assert flag_rate(gate, b, n, metric, 0.0, var_base, var_new, seed=2) < 0.02


def test_power_is_unknown_without_spread_and_unreachable_past_a_fraction():
    gate = cmp.GATED["downstream_acc"]
    one = {"scenario": "s", "downstream_acc": 0.87, "downstream_acc_std": float("nan"), "n_seeds": 1,
           "dp_mode": "none"}
    p = cmp.gate_power(gate, pd.Series(one), pd.Series(one), "downstream_acc")
    assert p.shift is None and p.band == gate.margin
    lines = cmp.summarize_power([p])
    assert "unknown: no spread" in cmp.format_power(lines)
    # epsilon 1's accuracy (0.51) must fall by more than it has: no regression of it fails the gate.
    eps1 = published_row("privacy-iid-local-eps1")
    p = cmp.gate_power(gate, pd.Series(eps1), pd.Series({**eps1, "n_seeds": 1, "downstream_acc_std": float("nan")}),
                       "downstream_acc")
    assert p.shift > p.base and not p.reachable


def test_detectable_is_band_plus_z_se():
    assert cmp.detectable(2.0, 1.0) == pytest.approx(2.0 + 1.6448536)
    assert cmp.detectable(2.0, 1.0, level=0.5) == pytest.approx(2.0)
    assert cmp.detectable(2.0, 0.0) == 2.0 and cmp.detectable(2.0, None) is None


def test_compare_prints_what_each_gate_detects(board, tmp_path, capsys):
    code, out, _ = run_cli(capsys, board, board)
    assert code == 0 and "detects a regression of" in out and "at 95%" in out
    lines = out.splitlines()
    for metric in ("fid", "kid", "downstream_acc", "mia_auc"):
        assert any(ln.startswith(f"{metric} ") and "no DP: 1" in ln for ln in lines) == (metric != "mia_auc"), out
        assert any(ln.startswith(f"{metric} ") and " DP: 2" in ln and "no DP" not in ln for ln in lines), out
    # The published board against a one-seed run of itself (.ci/run's gate): FID on a DP row needs
    # more than its 75% floor.
    rows = {name: {} for name in read_leaderboard(PRIVACY)["scenario"]}
    code, out, _ = run_cli(capsys, PRIVACY, one_seed_board(tmp_path, rows))
    (fid_dp,) = [ln for ln in out.splitlines() if ln.startswith("fid ") and "DP: 3" in ln and "no DP" not in ln]
    median_pct = float(fid_dp.split("(")[1].split("%")[0])
    assert code == 0 and median_pct > 75
    code, out, _ = run_cli(capsys, board, board, "--markdown")
    assert "| metric | rows | median | worst row |" in out


def test_readme_power_tables_are_the_published_boards():
    text = README.read_text()
    assert cmp.update_power_doc(text, read_leaderboard(PRIVACY)) == text, \
        "results/README.md is stale: run python scripts/schema_doc.py"
    assert "| `fid` |" in cmp.power_doc(read_leaderboard(PRIVACY))
    with pytest.raises(cmp.CompareError, match="markers"):
        cmp.update_power_doc("no markers", read_leaderboard(PRIVACY))


def test_the_floors_stand_for_about_the_measured_secret_noise():
    """A floor's per-run spread (the floor as the 3-sigma band of one new seed against the two-seed
    board) is within 0.9-3 times the spread of twelve draws of the epsilon-1 row (relative to their
    mean where the gate is relative)."""
    df = pd.read_csv(EPS1_DRAWS, comment="#")
    for metric, gate in cmp.GATED.items():
        measured = df[metric].std() / (df[metric].mean() if gate.relative else 1)
        assert 0.9 <= cmp.secret_sd(gate) / measured <= 3, (metric, cmp.secret_sd(gate), measured)


def test_seeds_the_targets_need():
    """Under the gate as it is a DP row's band is its floor whatever the seeds; a band that shrinks
    with them needs a baseline rerun with as many seeds (FID 50% worse: 8 a side) and no count of
    new seeds suffices against the published two."""
    for metric, target, _ in cmp.TARGETS:
        g = cmp.GATED[metric]
        assert cmp.seeds_needed(g, target) is None and cmp.seeds_needed(g, target, n_base=2, shrink=True) is None
        n = cmp.seeds_needed(g, target, shrink=True)
        assert cmp.floor_power(g, n, n, shrink=True) <= target < cmp.floor_power(g, n - 1, n - 1, shrink=True)
        assert cmp.floor_power(g, 100, 100) > g.noise_floor  # more seeds: only the 1.645 SE term shrinks
