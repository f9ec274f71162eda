"""The metric schema: one declaration per column, from which the CSV, the gates, the report, the
documentation and the check of metrics.json follow (fake run folders, no training)."""

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from benchmark import compare, schema
from benchmark.leaderboard import read_leaderboard, summarize
from benchmark.suites import get_scenario
from benchmark.schema import Column, Gate, SchemaError, Shown, check_metrics, registered
from conftest import REPO, write_fake_run


def runner_metrics(**changes) -> dict:
    """metrics.json as the runner writes it for a local DP-SGD run with attacks (numpy scalars included)."""
    m = {"fid": np.float64(412.5), "kid": 0.41, "fid_impl": "clean-fid", "fid_n_samples": 100, "fid_n_real": 100,
         "fid_reference": "mnist-embedded-test-28px-n100-seed0", "train_s": 3.9, "sample_s": 0.2, "fid_s": 4.1,
         "final_train_loss": np.float32(0.99), "dp_mode": "local-dpsgd", "epsilon": 3.99, "delta": 1e-5,
         "accountant": "opacus-rdp", "noise_multiplier": 1.1, "max_grad_norm": 1, "sample_rate": 0.125,
         "epsilon_target": 4.0, "grad_sample_mode": "hooks", "noise_multiplicity": 1,
         "downstream_acc": 0.31, "downstream_n_train": 100, "downstream_n_test": np.int64(1000),
         "mia_auc": 0.52, "mia_tpr_at_1pct_fpr": 0.0, "mia_tpr_at_0_1pct_fpr": 0.0, "mia_min_fpr": 1 / 64,
         "mia_best_attack": "mia-pia", "mia_n_candidates": 128, "epsilon_empirical_lb": 0.0,
         "audit_failed": np.bool_(False), "inversion_psnr": 5.4, "inversion_ssim": 0.01,
         "inversion_fedavg_psnr": None, "inversion_fedavg_ssim": None, "attack_s": 30.0}
    return {k: v for k, v in (m | changes).items() if v is not ...}


def test_runner_metrics_pass_and_each_misfit_is_one_line():
    assert check_metrics(runner_metrics()) == runner_metrics()
    no_dp = {k: v for k, v in runner_metrics().items() if not k.startswith(("mia_", "inversion_", "downstream_"))}
    check_metrics(no_dp | {"dp_mode": "none", "epsilon": None, "delta": None, "accountant": None,
                           "noise_multiplier": None, "max_grad_norm": None, "sample_rate": None})
    for bad, match in [
        (runner_metrics(fid_score=1.0), "unknown key(s) fid_score"),
        (runner_metrics(fid_reference=...), "missing key(s) fid_reference"),
        (runner_metrics(fid="412.5"), "fid must be float, got str"),
        (runner_metrics(fid_n_samples=100.0), "fid_n_samples must be int"),
        (runner_metrics(fid_n_samples=True), "fid_n_samples must be int, got bool"),
        (runner_metrics(audit_failed=0), "audit_failed must be bool"),
        (runner_metrics(fid=None), "fid is null"),
    ]:
        with pytest.raises(SchemaError, match=r"^metrics\.json: .*" + re.escape(match)) as e:
            check_metrics(bad)
        assert "\n" not in str(e.value)


def test_fake_runs_are_held_to_the_schema(tmp_path):
    s = get_scenario("smoke-iid")
    with pytest.raises(SchemaError, match="unknown key"):
        write_fake_run(tmp_path, s, 0, metrics={"fid_typo": 1.0})
    with pytest.raises(SchemaError, match="downstream_acc must be float"):
        write_fake_run(tmp_path, s, 1, metrics={"downstream_acc": "high"})


def test_declarations_are_checked():
    with pytest.raises(SchemaError, match="aggregation 'median'"):
        Column("x", "float", "metric", "median", "doc")
    with pytest.raises(SchemaError, match="gate needs a float"):
        Column("x", "str", "metric", "joined", "doc", gate=Gate(True, 1.0, False))
    with pytest.raises(SchemaError, match="declared more than once: fid"):
        with registered(Column("fid", "float", "metric", "mean", "again")):
            pass
    assert schema.COLUMNS.count("fid") == 1  # the failed registration left the schema as it was


def test_documented_direction_of_every_gate_matches_it():
    gated = [c for c in schema.LEADERBOARD if c.gate]
    assert [c.name for c in gated] == list(compare.GATED)
    for c in gated:
        assert c.better.startswith("lower" if c.gate.lower_is_better else "higher"), c.name
        assert c.agg == "mean_std", f"{c.name}: the band needs the seeds' spread ({c.name}_std)"


def test_committed_readme_tables_are_the_generated_ones():
    text = (REPO / "results" / "README.md").read_text()
    assert schema.update_doc(text) == text, "results/README.md is stale: run python scripts/schema_doc.py"
    with pytest.raises(SchemaError, match="schema:gates"):
        schema.update_doc(text.replace("<!-- schema:gates -->", ""))
    # The generator rewrites a hand-edited table.
    edited = text.replace("| `fid` | higher | 10% of the baseline value |", "| `fid` | higher | 50% |")
    assert edited != text and schema.update_doc(edited) == text


def test_a_new_column_touches_only_its_declaration(tmp_path):
    """One Column (and the metric written by the code that measures it) reaches the CSV, its dtype,
    the aggregation, the gates, --margin, the report and the documentation."""
    new = Column("leak_score", "float", "metric", "mean_std", "a new attack's score", unit="bits", better="lower",
                 gate=Gate(True, 0.25, False), report=Shown("leak ↓", fmt=".2f", std=True), required=False,
                 nullable=True)
    s = get_scenario("privacy-iid-local-eps4")
    with pytest.raises(SchemaError, match="unknown key.*leak_score"):
        write_fake_run(tmp_path / "before", s, 0, metrics={"leak_score": 1.0})
    with registered(new, after="inversion_ssim"):
        for seed, v in ((0, 1.0), (1, 2.0)):
            write_fake_run(tmp_path / "runs", s, seed, metrics={"leak_score": v})
        (path,) = summarize(tmp_path / "runs", tmp_path / "results")
        cols = list(pd.read_csv(path).columns)
        assert cols[cols.index("inversion_ssim_std") + 1: cols.index("inversion_ssim_std") + 3] == \
            ["leak_score", "leak_score_std"]
        row = read_leaderboard(path).iloc[0]
        assert row["leak_score"] == 1.5 and row["leak_score_std"] == pytest.approx(np.sqrt(0.5))
        assert compare.GATED["leak_score"] == Gate(True, 0.25, False)
        assert compare.parse_margin("leak_score=0.5") == ("leak_score", 0.5, False)
        base = read_leaderboard(path)
        worse = base.copy()
        worse.loc[0, "leak_score"] = 3.5  # +2: inside the band 3 * sqrt(0.5/2 + 0.5/2) = 2.12 (> margin 0.25)
        assert [f.status for f in compare.compare(base, worse) if f.check.startswith("leak_score")] == ["ok"]
        worse.loc[0, "leak_score"] = 4.5
        assert [f.status for f in compare.compare(base, worse) if f.check.startswith("leak_score")] == ["WORSE"]
        md = (path.parent / "README.md").read_text()
        assert "| leak ↓ |" in md and "1.50 ± 0.71" in md
        docs = schema.doc_tables()
        assert "| `leak_score` | float | bits | metrics.json `leak_score` |" in docs["leaderboard"]
        assert "| `leak_score` | higher | 0.25 bits |" in docs["gates"]
        assert "| `leak_score` |" in docs["metrics"]
    assert "leak_score" not in schema.COLUMNS and "leak_score" not in compare.GATED
    assert "leak_score" not in schema.doc_tables()["leaderboard"]


def test_summarize_and_compare_modules_import_neither_torch_nor_flwr():
    code = ("import sys; import benchmark.schema; assert not {'pandas', 'numpy'} & set(sys.modules); "
            "import benchmark.leaderboard, benchmark.compare, benchmark.report; "
            "bad = {'torch', 'flwr'} & set(sys.modules); assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _derive(name: str, sources: dict):
    return next(c for c in schema.LEADERBOARD if c.name == name).derive(sources)


def _one_run_record(r: int, v: int, *, claim: float | None, m: int = 100) -> dict:
    """An audit record with one one-run test and one guess count (r guesses, v right), delta 0."""
    ev = {"method": "one-run", "m": m, "n_included": m // 2, "guesses": [[r, v]]}
    return {"delta": 0.0, "epsilon_audited": claim, "tests": [{"evidence": ev}]}


def test_the_row_bound_is_a_bound_over_seeds_not_a_mean():
    """With r guesses all right and delta 0, the one-run p-value is q^r (q = e^eps / (1 + e^eps)), so the
    bound at level a is logit(a^(1/r)) in closed form. Two seeds: the row takes each at 0.05 / 2 and the
    max, not the mean of the seeds' 95 % bounds; its ceiling is the perfect attack's at the same counts."""
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    seeds = [_one_run_record(20, 20, claim=1.0), _one_run_record(40, 30, claim=1.0)]
    metrics = [{"epsilon_audited": 1.0, "epsilon_empirical_lb": 9.0}, {"epsilon_audited": 1.0}]
    sources = {"metric": metrics, "audit": seeds}
    lb = _derive("epsilon_empirical_lb", sources)
    assert lb == pytest.approx(logit(0.025 ** (1 / 20)), abs=1e-5)        # the 20-of-20 seed decides
    assert lb < logit(0.05 ** (1 / 20))                                    # stricter than one seed at 95 %
    assert _derive("audit_ceiling", sources) == pytest.approx(logit(0.025 ** (1 / 40)), abs=1e-5)
    assert _derive("audit_verdict", sources) == "failed" and _derive("audit_failed", sources) is True
    # claim between bound and ceiling: passed; above the ceiling: inconclusive (the test could not fail)
    for claim, verdict in ((2.0, "passed"), (3.0, "inconclusive")):
        s = {"metric": [{"epsilon_audited": claim}] * 2,
             "audit": [_one_run_record(20, 20, claim=claim), _one_run_record(40, 30, claim=claim)]}
        assert logit(0.025 ** (1 / 20)) < claim and (claim < logit(0.025 ** (1 / 40))) == (verdict == "passed")
        assert _derive("audit_verdict", s) == verdict and _derive("audit_failed", s) is False
    # without a claim (no DP): the bound is shown, no verdict
    s = {"metric": [{}, {}], "audit": [_one_run_record(20, 20, claim=None)] * 2}
    assert _derive("audit_verdict", s) is None and _derive("audit_failed", s) is None
    # several seeds recorded without evidence: no valid row bound can be made
    assert _derive("epsilon_empirical_lb", {"metric": metrics, "audit": [{}, {}]}) is None
