"""Differences between rows with 95 % intervals over seeds (benchmark/intervals.py), the declared
comparisons (benchmark/comparisons.py), the report's section and the frontier's error bars."""

import math

import numpy as np
import pytest
from scipy import stats

from benchmark.comparisons import (COMPARISONS, Comparison, ComparisonError, Measured, comparisons,
                                   lower_is_better, measure, register_comparisons)
from benchmark.intervals import NO_SPREAD, PAIRED, TOO_FEW, WELCH, Difference, difference, mean_halfwidth
from benchmark.leaderboard import build_results, summarize
from benchmark.suites import get_suite, suite_names
from conftest import write_fake_run


# ---------------------------------------------------------------------------- the interval math
def test_paired_interval_is_scipys_ttest_rel():
    a = {0: 101.7, 1: 95.2, 2: 108.9, 3: 99.0}
    b = {0: 116.8, 1: 117.1, 2: 121.0, 3: 104.5}
    d = difference(a, b)
    ci = stats.ttest_rel(list(a.values()), list(b.values())).confidence_interval(0.95)
    assert d.method == PAIRED and d.paired and d.n == 4 and (d.n_a, d.n_b) == (4, 4)
    assert d.diff == pytest.approx(np.mean(np.subtract(list(a.values()), list(b.values()))), rel=1e-12)
    assert (d.lo, d.hi) == (pytest.approx(ci.low, rel=1e-10), pytest.approx(ci.high, rel=1e-10))
    assert d.significant == (ci.low > 0 or ci.high < 0)
    # The pairs are matched by seed, not by order.
    assert difference(dict(reversed(list(a.items()))), b) == d


def test_welch_interval_is_scipys_ttest_ind_unequal_var():
    a = {0: 0.474, 1: 0.441, 2: 0.52}     # one seed shared: fewer than 2, so unpaired
    b = {2: 0.312, 5: 0.14, 6: 0.25, 7: 0.2}
    d = difference(a, b)
    ci = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).confidence_interval(0.95)
    assert d.method == WELCH and not d.paired and (d.n_a, d.n_b) == (3, 4) and d.n == 7
    assert d.diff == pytest.approx(np.mean(list(a.values())) - np.mean(list(b.values())), rel=1e-12)
    assert (d.lo, d.hi) == (pytest.approx(ci.low, rel=1e-10), pytest.approx(ci.high, rel=1e-10))
    assert d.significant and ci.low > 0


def test_paired_over_the_shared_seeds_only():
    a, b = {0: 1.0, 1: 2.5, 2: 9.0}, {0: 0.5, 1: 1.5, 7: 3.0}  # seeds 0 and 1 shared
    d = difference(a, b)
    ci = stats.ttest_rel([1.0, 2.5], [0.5, 1.5]).confidence_interval(0.95)
    assert d.method == PAIRED and d.n == 2 and d.diff == pytest.approx(0.75)
    assert (d.lo, d.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_too_few_seeds_gives_no_interval():
    for a, b in (({0: 1.0}, {0: 2.0, 1: 3.0}), ({0: 1.0, 1: 2.0}, {5: 4.0}), ({0: 1.0, 1: None}, {0: 2.0, 1: 2.5}),
                 ({0: 1.0, 1: float("nan")}, {0: 0.0, 1: 1.0})):
        d = difference(a, b)
        assert d.method == TOO_FEW and d.lo is None and d.hi is None and not d.significant
    assert difference({0: 1.0}, {0: 2.0, 1: 3.0}).diff == pytest.approx(-1.5)
    assert difference({}, {0: 2.0}).diff is None


def test_no_spread_gives_no_interval_rather_than_a_point():
    d = difference({0: 1.0, 1: 2.0}, {0: 0.0, 1: 1.0})  # the same difference on both seeds
    assert d.method == PAIRED and d.no_interval == NO_SPREAD and d.lo is None and not d.significant
    assert d.diff == pytest.approx(1.0)
    d = difference({0: 1.0, 1: 1.0}, {5: 0.0, 6: 0.0})
    assert d.method == WELCH and d.no_interval == NO_SPREAD
    assert difference({0: 1.0}, {0: 2.0}).no_interval == TOO_FEW and difference(
        {0: 1.0, 1: 2.0}, {0: 0.0, 1: 0.5}).no_interval is None


def test_significance_is_the_interval_excluding_zero():
    assert difference({0: 0.0, 1: 10.0}, {0: 0.1, 1: 0.2}).significant is False
    assert difference({0: 5.0, 1: 5.1, 2: 5.2}, {0: 1.0, 1: 1.05, 2: 1.1}).significant is True
    with pytest.raises(ValueError, match="confidence level"):
        difference({0: 1.0}, {0: 1.0}, level=95)


def test_mean_halfwidth_is_scipys_t_interval():
    xs = [101.7, 95.2, 108.9]
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=stats.sem(xs))
    assert mean_halfwidth(float(np.std(xs, ddof=1)), 3) == pytest.approx((hi - lo) / 2, rel=1e-10)
    assert mean_halfwidth(5.0, 1) is None and mean_halfwidth(None, 3) is None
    assert mean_halfwidth(float("nan"), 3) is None


# ----------------------------------------------------------------------- declared comparisons
def test_directions_come_from_the_schema():
    assert lower_is_better("fid") and lower_is_better("mia_auc") and not lower_is_better("downstream_acc")
    for bad in ("no_such_column", "scenario", "dp_mode"):
        with pytest.raises(ComparisonError, match=bad):
            lower_is_better(bad)
    with pytest.raises(ComparisonError, match="no_such_column"):
        Comparison("x-a", "x-b", "a vs b", ("no_such_column",))
    with pytest.raises(ComparisonError, match="itself"):
        Comparison("x-a", "x-a", "a vs a")


def test_the_registry_refuses_a_second_declaration():
    with pytest.raises(ValueError, match="twice"):
        register_comparisons("cross-device")(lambda: ())


def test_verdict_words():
    better_a = Difference(-5.0, -8.0, -2.0, PAIRED, 3, 3)
    c = Comparison("cross-device-iid-ftrl-eps10", "cross-device-iid-sampled-eps10", "x")
    assert Measured(c, "fid", "cpu", better_a).verdict == "significant: A better"
    assert Measured(c, "downstream_acc", "cpu", better_a).verdict == "significant: B better"
    assert Measured(c, "fid", "cpu", Difference(-1.0, -3.0, 1.0, WELCH, 3, 2)).verdict == "not significant"
    assert Measured(c, "fid", "cpu", Difference(-1.0, None, None, TOO_FEW, 1, 2)).verdict == TOO_FEW
    assert Measured(c, "fid", "cpu", Difference(0.0, None, None, PAIRED, 2, 2)).verdict == NO_SPREAD


@pytest.mark.parametrize("suite", sorted(COMPARISONS))
def test_every_declared_row_is_a_row_of_its_suite(suite):
    """A declaration naming a row its suite never defines at any scale is a typo, not a plan."""
    assert suite in suite_names()
    names = {s.name for scale in ("cpu", "gpu") for s in get_suite(suite, scale)}
    declared = COMPARISONS[suite]()
    assert declared and len({(c.a, c.b) for c in declared}) == len(declared)
    assert {n for c in declared for n in (c.a, c.b)} <= names


def test_what_the_issue_asks_of_the_cross_device_suite():
    rows = {s.name for s in get_suite("cross-device", "cpu")}
    pairs = {(c.a, c.b) for c in comparisons("cross-device", rows)}
    row = "cross-device-iid-{}-eps{}".format
    for eps in ("10", "4", "1"):
        assert {(row("ftrl", eps), row("sampled", eps)), (row("sampled", eps), row("fixed", eps)),
                (row("ftrl", eps), row("fixed", eps))} <= pairs
    for mode in ("ftrl", "sampled", "fixed"):
        assert {(row(mode, "10"), row(mode, "4")), (row(mode, "4"), row(mode, "1"))} <= pairs
    assert (row("sampled-adaptive", "10"), row("sampled", "10")) in pairs
    assert ("cross-device-iid-nodp", "cross-device-public-only") in pairs
    privacy = {(c.a, c.b) for c in comparisons("privacy", {s.name for s in get_suite("privacy", "cpu")})}
    assert {("privacy-iid-nodp", "privacy-iid-local-eps10"), ("privacy-iid-local-eps10", "privacy-iid-local-eps4"),
            ("privacy-iid-local-eps4", "privacy-iid-local-eps1"),
            ("privacy-iid-nodp", "privacy-public-only")} <= privacy
    assert comparisons("privacy-grid", {"grid-iid-nodp"}) == () and comparisons("no-such-suite", rows) == ()


# ---------------------------------------------------------------- the report, from run folders
FID = {  # scenario (without the suite prefix) -> seed -> FID
    "iid-ftrl-eps10": {0: 100.0, 1: 102.0, 2: 104.0},
    "iid-sampled-eps10": {0: 110.0, 1: 111.0, 2: 115.0},
    "iid-ftrl-eps4": {3: 120.0, 4: 126.0},                # other seeds than sampled's: Welch
    "iid-sampled-eps4": {0: 121.0, 1: 119.0, 2: 124.0},
    "iid-fixed-eps10": {0: 130.0},                        # one seed: no interval, no error bar
    "iid-nodp": {0: 87.0, 1: 88.0},
    "public-only": {0: 113.0},
}
ACC = {"iid-ftrl-eps10": {0: 0.5, 1: 0.6, 2: 0.4}, "iid-sampled-eps10": {0: 0.45, 1: 0.65, 2: 0.42}}


def make_cross_device(runs):
    suite = {s.name: s for s in get_suite("cross-device", "cpu")}
    for short, fids in FID.items():
        for seed, fid in fids.items():
            metrics = {"mia_auc": 0.5 + seed / (50 if "ftrl" in short else 100)}
            if short in ACC:
                metrics["downstream_acc"] = ACC[short][seed]
            write_fake_run(runs, suite[f"cross-device-{short}"], seed, fid=fid, metrics=metrics)


def table_row(md: str, what: str, metric: str) -> list[str]:
    hits = [ln for ln in md.splitlines() if ln.startswith(f"| {what} |") and f"| {metric} |" in ln]
    assert len(hits) == 1, (what, metric, hits)
    return [c.strip() for c in hits[0].strip("|").split("|")]


def test_the_report_states_every_declared_comparison_with_its_interval(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    make_cross_device(runs)
    write_fake_run(runs, get_suite("smoke", "cpu")[0], 0)  # a suite that declares nothing
    summarize(runs, results)
    md = (results / "cross-device" / "README.md").read_text()
    assert "## Comparisons (95% intervals over seeds)" in md
    assert "## Comparisons" not in (results / "smoke" / "README.md").read_text()
    # Paired over seeds 0-2, FID lower for FTRL: significant, A (FTRL) better.
    row = table_row(md, "DP-FTRL vs sampled DP-FedAvg, epsilon 10", "FID ↓")
    a, b = FID["iid-ftrl-eps10"], FID["iid-sampled-eps10"]
    ci = stats.ttest_rel(list(a.values()), list(b.values())).confidence_interval(0.95)
    assert row[1:3] == ["`iid-ftrl-eps10`", "`iid-sampled-eps10`"]
    assert row[4:] == ["-10.0", f"[{ci.low:+.1f}, {ci.high:+.1f}]", "paired", "3", "**significant: A better**"]
    assert table_row(md, "DP-FTRL vs sampled DP-FedAvg, epsilon 10", "downstream acc ↑")[-1] == "not significant"
    assert table_row(md, "DP-FTRL vs sampled DP-FedAvg, epsilon 10", "MIA AUC ↓")[6:8] == ["paired", "3"]
    # No shared seed at epsilon 4: Welch over 2 + 3 seeds, and FID higher for FTRL there.
    row = table_row(md, "DP-FTRL vs sampled DP-FedAvg, epsilon 4", "FID ↓")
    a, b = FID["iid-ftrl-eps4"], FID["iid-sampled-eps4"]
    ci = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).confidence_interval(0.95)
    assert row[5:8] == [f"[{ci.low:+.1f}, {ci.high:+.1f}]", "Welch", "2 + 3"]
    assert row[-1] == ("not significant" if ci.low < 0 < ci.high else "**significant: B better**")
    # One shared seed, and public-only has only that one: too few, the mean difference without an interval.
    row = table_row(md, "no DP vs the public checkpoint", "FID ↓")
    assert row[4:] == ["-25.5", "", "", "2 + 1", "too few seeds"]
    assert table_row(md, "sampled DP-FedAvg vs fixed-count DP-FedAvg, epsilon 10", "FID ↓")[-1] == "too few seeds"
    # Declared rows the suite defines but these runs lack are named, not silently dropped.
    gone = next(ln for ln in md.splitlines() if ln.startswith("Declared, not in these runs:"))
    assert "DP-FTRL vs fixed-count DP-FedAvg, epsilon 4 (`iid-fixed-eps4` not run)" in gone
    assert "sampled DP-FedAvg: epsilon 4 vs 1 (`iid-sampled-eps1` not run)" in gone
    # The count of significant differences is the table's.
    body = md.split("## Comparisons")[1].split("\n## ")[0]
    n_sig, n_rows = body.count("**significant:"), sum(ln.startswith("| ") for ln in body.splitlines()) - 1
    assert f"{n_sig} of {n_rows} differences significant." in body


def test_measure_reads_the_seeds_the_board_was_built_from(tmp_path):
    make_cross_device(tmp_path)
    res = build_results(tmp_path)["cross-device"]
    measured, unmeasured = measure("cross-device", res.leaderboard, res.runs)
    got = {(m.comparison.a, m.comparison.b, m.column): m.difference for m in measured}
    d = got[("cross-device-iid-ftrl-eps10", "cross-device-iid-sampled-eps10", "fid")]
    assert d.diff == pytest.approx(-10.0) and d.n == 3
    assert ("cross-device-iid-nodp", "cross-device-public-only", "downstream_acc") not in got  # neither row measured it: no line
    assert all(u.missing for u in unmeasured)
    assert measure("smoke", res.leaderboard, res.runs) == ([], [])


def test_frontier_error_bars_are_95_intervals_of_the_mean(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.axes import Axes

    from benchmark.report import plot_frontier

    drawn = []
    original = Axes.errorbar

    def spy(self, x, y, yerr=None, **kw):
        drawn.append((kw.get("label"), list(x), list(y), None if yerr is None else list(yerr)))
        return original(self, x, y, yerr=yerr, **kw)

    monkeypatch.setattr(Axes, "errorbar", spy)
    make_cross_device(tmp_path / "runs")
    df = build_results(tmp_path / "runs")["cross-device"].leaderboard
    assert plot_frontier(df, tmp_path / "frontier.png").exists()
    bars = {}
    for _label, xs, ys, errs in drawn:  # FID and accuracy panels: key each point by its mean
        bars.update({round(y, 6): e for y, e in zip(ys, errs)})
    for short in ("iid-ftrl-eps10", "iid-sampled-eps10", "iid-ftrl-eps4", "iid-sampled-eps4"):
        xs = list(FID[short].values())
        lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=stats.sem(xs))
        assert bars[round(float(np.mean(xs)), 6)] == pytest.approx((hi - lo) / 2, rel=1e-9), short
        assert (hi - lo) / 2 > np.std(xs, ddof=1)  # wider than the std at 2-3 seeds: not the std
    assert math.isnan(bars[130.0])  # one seed: no bar
