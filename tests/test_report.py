"""results/<suite>/README.md and the plots, from fake run folders (no training)."""

import numpy as np
import pytest
from PIL import Image

from benchmark.leaderboard import summarize
from attacks.base import auc, roc_curve
from benchmark.report import attack_scores
from benchmark.suites import get_scenario
from conftest import write_fake_run

PRIVACY = ("grid-iid-nodp", "grid-iid-local-eps1", "grid-iid-local-eps4", "grid-iid-central-eps4",
           "grid-dirichlet-0.5-local-eps4")


def make_suite(runs, attacks=True):
    for i, name in enumerate(PRIVACY):
        s = get_scenario(name)
        for seed in (0, 1):
            write_fake_run(runs, s, seed, fid=80.0 + 10 * i + seed,
                           attacks={"mia-loss": 0.1 * i, "mia-secmi": 0.3} if attacks else None)


def test_report_files_plots_and_markdown(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    make_suite(runs)
    summarize(runs, results)
    out = results / "privacy-grid"
    pngs = ["frontier.png", "attack_vs_epsilon.png", "roc.png", "samples.png"]
    per_row = [f"{d}/{n}-{get_scenario(n).hash}.png" for d in ("roc", "inversion") for n in PRIVACY]
    for name in pngs + per_row:
        with Image.open(out / name) as im:  # the inversion copies are the fake runs' small figures
            assert im.format == "PNG" and (min(im.size) > 100 or name.startswith("inversion/")), name
    md = (out / "README.md").read_text()
    for name in PRIVACY:
        assert f"`{name}`" in md
    for name in pngs + per_row:
        assert f"]({name})" in md
    # The inversion figure is the lowest seed's, byte for byte.
    first = runs / "privacy-grid" / f"{PRIVACY[0]}-{get_scenario(PRIVACY[0]).hash}" / "seed-0" / "inversion.png"
    assert (out / per_row[len(PRIVACY)]).read_bytes() == first.read_bytes()
    assert "## Membership-inference attacks" in md and "mia-secmi" in md and "FAILED" not in md
    # Rebuilding gives the same bytes, plots included.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    summarize(runs, results)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_sample_grids_of_old_definitions_do_not_outlive_a_rebuild(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    make_suite(runs)
    summarize(runs, results)
    grids = results / "privacy-grid" / "samples"
    kept = sorted(p.name for p in grids.glob("*.png"))
    assert kept == sorted(f"{n}-{get_scenario(n).hash}.png" for n in PRIVACY)
    (grids / f"{PRIVACY[0]}-000000000000.png").write_bytes((grids / kept[0]).read_bytes())  # an old hash
    summarize(runs, results)
    assert sorted(p.name for p in grids.glob("*.png")) == kept


def test_report_without_attacks_and_without_dp(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    make_suite(tmp_path / "old-runs")  # with attacks: its attack files must not outlive a rebuild
    summarize(tmp_path / "old-runs", results)
    assert all((results / "privacy-grid" / n).exists() for n in ("attacks.csv", "roc.png", "inversion"))
    make_suite(runs, attacks=False)
    write_fake_run(runs, get_scenario("smoke-iid"), 0)
    summarize(runs, results)
    assert (results / "privacy-grid" / "frontier.png").exists()
    for name in ("attack_vs_epsilon.png", "roc.png", "roc", "inversion", "attacks.csv"):
        assert not (results / "privacy-grid" / name).exists(), name
    md = (results / "privacy-grid" / "README.md").read_text()
    assert "No attacks ran" in md and "MIA AUC" not in md
    # No DP at all: no frontier to draw, the table and the sample grid remain.
    assert not (results / "smoke" / "frontier.png").exists()
    assert (results / "smoke" / "samples.png").exists() and "`smoke-iid`" in (results / "smoke" / "README.md").read_text()


def test_failed_audit_is_loud(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    s = get_scenario("grid-iid-local-eps1")
    write_fake_run(runs, s, 0, attacks={"mia-loss": 2.0}, metrics={"audit_failed": True, "epsilon_empirical_lb": 1.7})
    write_fake_run(runs, s, 1, attacks={"mia-loss": 2.0})
    summarize(runs, results)
    md = (results / "privacy-grid" / "README.md").read_text()
    head = md.split("| scenario |")[0]
    assert "**FAILED PRIVACY AUDIT**" in head and "`grid-iid-local-eps1`" in head
    assert "**FAILED**" in md


def test_roc_curve_known_answer():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    labels = np.array([1, 1, 0, 0, 0])
    fpr, tpr, _ = roc_curve(scores, labels)  # the one ROC the report and the attacks share
    # thresholds: >=0.9 -> (0, 1/2); >=0.8 (tie, one member one non-member) -> (1/3, 1); then (2/3, 1), (1, 1)
    assert np.allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1]) and np.allclose(tpr, [0, 0.5, 1, 1, 1])
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=300).round(1), rng.integers(0, 2, 300)
    assert auc(s, y) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_attack_scores_reads_the_npz_convention(tmp_path):
    run = write_fake_run(tmp_path, get_scenario("grid-iid-local-eps4"), 0, attacks={"mia-loss": 1.0, "mia-pia": 0.5})
    got = attack_scores(run)
    assert sorted(got) == ["mia_loss", "mia_pia"]
    scores, labels = got["mia_loss"]
    assert scores.shape == labels.shape == (400,) and set(np.unique(labels)) == {0, 1}
    assert attack_scores(tmp_path) == {}


def test_a_canary_set_is_never_the_rows_best_attack():
    from benchmark.report import best_attack

    y = np.r_[np.ones(50), np.zeros(50)]
    rng = np.random.default_rng(0)
    scores = {"mia_loss": (rng.random(100), y), "mia_pia": (y + rng.random(100), y),
              "mia_loss_canary": (y * 2.0, y)}          # perfect, but planted
    assert best_attack(scores) == "mia_pia"
    assert best_attack({"mia_loss_canary": (y, y)}) is None


def test_unreadable_run_files_are_one_line_errors(tmp_path, capsys):
    from benchmark.cli import main

    runs = tmp_path / "runs"
    run = write_fake_run(runs, get_scenario("grid-iid-local-eps4"), 0, attacks={"mia-loss": 1.0})
    np.savez(run / "attack_scores.npz", mia_loss_scores=np.zeros(3))  # labels missing
    assert main(["summarize", str(runs), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: ") and "mia_loss_labels" in err[0]
    (run / "attack_scores.npz").unlink()
    (run / "samples.png").write_text("not a png")
    assert main(["summarize", str(runs), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "samples.png: unreadable" in err[0]


def test_terminal_summary_names_failed_and_inconclusive_audits(tmp_path):
    import pandas as pd

    from benchmark.report import SUMMARY_COLUMNS, terminal_summary

    board = tmp_path / "privacy" / "leaderboard.csv"
    board.parent.mkdir()
    df = pd.DataFrame({"suite": ["privacy"] * 3, "scenario": ["a-nodp", "b-local", "c-central"],
                       "dp_mode": ["none", "local-dpsgd", "central-dp"], "epsilon": [None, 3.9971, 4.0],
                       "fid": [410.2, 407.0, 461.1], "kid": [0.5, 0.52, 0.6], "mia_auc": [0.56, 0.54, 0.54],
                       "epsilon_empirical_lb": [0.0, 5.2, 0.0], "audit_failed": [None, True, False]})
    df.to_csv(board, index=False)
    (board.parent / "frontier.png").write_bytes(b"")
    text = terminal_summary(board, runs_dir=tmp_path / "runs")
    lines = text.splitlines()
    assert lines[0] == "== privacy: 3 scenario(s)" and lines[1].split() == list(SUMMARY_COLUMNS)
    row = {ln.split()[0]: ln.split() for ln in lines[3:6]}
    assert row["b-local"][-1] == "FAILED" and row["c-central"][-1] == "passed" and row["a-nodp"][-1] == "0"
    assert "audit FAILED (1): b-local" in text and "leaderboard: " + str(board) in text
    assert "frontier.png" in text and str(tmp_path / "runs") in text
    # An audit_verdict column, where the leaderboard has one, is read instead.
    df["audit_verdict"] = ["", "passed", "inconclusive"]
    df.to_csv(board, index=False)
    text = terminal_summary(board)
    assert "audit inconclusive (1): c-central" in text and "FAILED" not in text
    assert "audit: none failed (2 DP row(s) audited, 1 of them inconclusive)" in text


def test_roc_curves_of_a_14_row_suite_all_look_different():
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.lines import Line2D

    from benchmark.report import _distinct

    lines = [Line2D([0, 1], [0, 1]) for _ in range(20)]
    modes = ["none", "local-dpsgd", "central-dp", "none"] * 5
    _distinct(lines, modes)
    looks = {(matplotlib.colors.to_hex(ln.get_color()), str(ln.get_linestyle())) for ln in lines}
    assert len({matplotlib.colors.to_hex(ln.get_color()) for ln in lines}) == 20 and len(looks) == 20
    assert lines[0].get_linestyle() != lines[1].get_linestyle()  # dp_mode sets the style


def test_planted_rows_are_reported_as_caught_or_missed_not_as_failed_claims(tmp_path):
    """The audit-power suite's planted rows: the report lists each plant and whether the audit
    caught it, and a caught plant does not raise the FAILED PRIVACY AUDIT banner of a real claim."""
    from benchmark.report import terminal_summary

    runs, results = tmp_path / "runs", tmp_path / "results"
    caught = get_scenario("audit-power-eps4-noise-off")
    missed = get_scenario("audit-power-eps1-noise-x0.4")
    correct = get_scenario("audit-power-eps4")
    write_fake_run(runs, caught, 0, attacks={"mia-loss": 2.0},
                   metrics={"audit_failed": True, "epsilon_empirical_lb": 9.9, "epsilon_audited": 3.96})
    write_fake_run(runs, missed, 0, attacks={"mia-loss": 0.1})
    write_fake_run(runs, correct, 0, attacks={"mia-loss": 0.1})
    summarize(runs, results)
    md = (results / "audit-power" / "README.md").read_text()
    assert "## Planted defects (auditing the audit)" in md
    assert "`audit-power-eps4-noise-off`: noise-off (no noise is drawn): **caught**" in md
    assert "`audit-power-eps1-noise-x0.4`: noise-x0.4" in md and "**missed**" in md
    assert "`audit-power-eps4`:" not in md.split("## Planted defects")[1].split("|")[0]
    assert "**FAILED PRIVACY AUDIT**" not in md
    text = terminal_summary(results / "audit-power" / "leaderboard.csv", runs_dir=runs)
    assert "planted audit-power-eps4-noise-off: noise-off (no noise is drawn): caught" in text
