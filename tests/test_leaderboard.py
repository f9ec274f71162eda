"""Leaderboards from run folders: aggregation over seeds, complete runs only, byte-stable CSVs."""


import numpy as np
import pandas as pd
import pytest

from benchmark import leaderboard
from benchmark.leaderboard import LeaderboardError, read_leaderboard, summarize
from benchmark.schema import ATTACK_COLUMNS, COLUMNS, DTYPES
from benchmark.rundir import run_dir
from benchmark.suites import get_scenario
from conftest import REPO, write_fake_run


def fake_run(root, scenario, seed, fid, complete=True, env=None, **kw):
    return write_fake_run(root, scenario, seed, fid=fid, complete=complete, env=env, **kw)


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


def test_attack_columns_and_attacks_csv(tmp_path):
    runs = tmp_path / "runs"
    s = get_scenario("privacy-iid-local-eps4")
    fake_run(runs, s, 0, 10.0, attacks={"mia-loss": 0.3, "mia-secmi": 1.0})
    fake_run(runs, s, 1, 12.0, attacks={"mia-loss": 0.5, "mia-secmi": 1.2})
    fake_run(runs, get_scenario("privacy-iid-nodp"), 0, 9.0)  # no attack files at all
    (path,) = summarize(runs, tmp_path / "results")
    df = read_leaderboard(path).set_index("scenario")
    row = df.loc["privacy-iid-local-eps4"]
    assert row["mia_best_attack"] == "mia-secmi" and 0.5 < row["mia_auc"] < 1
    assert row["mia_auc_std"] > 0 and row["inversion_psnr"] == 12.5 and not row["audit_failed"]
    assert list(df.columns).index("mia_best_attack") == list(df.columns).index("mia_auc") + 2
    nodp = df.loc["privacy-iid-nodp"]
    assert pd.isna(nodp["mia_auc"]) and pd.isna(nodp["mia_best_attack"]) and pd.isna(nodp["audit_failed"])

    attacks = pd.read_csv(path.parent / "attacks.csv")
    assert list(attacks.columns) == ATTACK_COLUMNS
    assert list(attacks["attack"]) == ["mia-loss", "mia-secmi"]  # the no-attack scenario has no rows
    loss = attacks.set_index("attack").loc["mia-loss"]
    assert loss["epsilon_lb"] == pytest.approx(0.4) and loss["tpr_at_1pct_fpr"] == pytest.approx(0.09)
    assert loss["n_seeds"] == 2 and loss["n_members"] == 200 and loss["epsilon"] == pytest.approx(3.96)


def test_without_attacks_no_attacks_csv(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, get_scenario("smoke-iid"), 0, 10.0)
    (path,) = summarize(runs, tmp_path / "results")
    assert not (path.parent / "attacks.csv").exists()
    assert read_leaderboard(path)["mia_auc"].isna().all()


def documented_columns() -> dict[str, str]:
    """column -> dtype, from the leaderboard table of results/README.md."""
    text = (REPO / "results" / "README.md").read_text()
    section = text.split("## leaderboard.csv", 1)[1].split("\n## ", 1)[0]
    table = [ln for ln in section.splitlines() if ln.startswith("|")]
    out = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out[cells[0].strip("`")] = cells[1]
    return out


def test_results_readme_documents_every_column_with_its_dtype(tmp_path):
    """What summarize writes (its header, and the types a plain read_csv infers) is what
    results/README.md documents: the document against the file, not the schema against itself."""
    doc = documented_columns()
    # A fully populated leaderboard reads back with the documented types, also with plain read_csv.
    runs = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(runs, get_scenario("privacy-iid-local-eps4"), seed, 10.0 + seed, attacks={"mia-loss": 0.3 + seed},
                 metrics={"downstream_acc": 0.5 + seed / 10})
    (path,) = summarize(runs, tmp_path / "results")
    plain = pd.read_csv(path)
    assert plain.notna().all().all(), plain.columns[plain.isna().any()].tolist()
    assert list(plain.columns) == list(doc)
    kinds = {"str": "O", "int": "i", "float": "f", "bool": "b"}
    assert {c: plain[c].dtype.kind for c in plain.columns} == {c: kinds[t] for c, t in doc.items()}


def test_relation_and_estimate_columns(tmp_path):
    """``neighbouring_relation`` is the mechanism's relation for the row's ``epsilon``;
    ``epsilon_estimate`` the mean over seeds of the white-box estimate of the headline unit's
    canaries (a central row's canary clients before any image-level set), empty without them."""
    from benchmark import schema
    from privacy.mechanisms import get_mechanism

    runs = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(runs, get_scenario("privacy-iid-local-eps4"), seed, 10.0, attacks={"mia-loss": 0.3})
        fake_run(runs, get_scenario("privacy-iid-nodp"), seed, 10.0, attacks={"mia-loss": 0.3})
    (path,) = summarize(runs, tmp_path / "results", report=False)
    board = read_leaderboard(path).set_index("scenario")
    assert board.loc["privacy-iid-local-eps4", "neighbouring_relation"] == "add/remove one image"
    assert board.loc["privacy-iid-local-eps4", "epsilon_estimate"] == pytest.approx(1.5)   # seeds' 1.0 and 2.0
    assert pd.isna(board.loc["privacy-iid-nodp", "neighbouring_relation"])
    assert pd.isna(board.loc["privacy-iid-nodp", "epsilon_estimate"])
    assert get_mechanism("central-dp").epsilon_relation.startswith("zero-out one client")
    assert get_mechanism("central-dp-sampled").epsilon_relation == "add/remove one client"
    both = {"a": {"unit": "image", "epsilon_estimate": 9.0}, "b": {"unit": "client", "epsilon_estimate": 3.0},
            "c": {"unit": "client", "epsilon_estimate": None}}
    assert schema._estimate({"canaries": [both, {"b": {"unit": "client", "epsilon_estimate": 5.0}}]}) == 4.0
    assert schema._estimate({"canaries": [{}, {}]}) is None


def test_a_version_4_board_is_read_upgraded(tmp_path):
    """A board published at schema 4 reads as version 5: the relation from its dp_mode, the
    estimate empty (never invented)."""
    runs = tmp_path / "runs"
    fake_run(runs, get_scenario("privacy-iid-local-eps4"), 0, 10.0, attacks={"mia-loss": 0.3})
    fake_run(runs, get_scenario("privacy-iid-nodp"), 0, 10.0, attacks={"mia-loss": 0.3})
    (path,) = summarize(runs, tmp_path / "results", report=False)
    v4 = pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=["neighbouring_relation",
                                                                             "epsilon_estimate"])
    v4["schema_version"] = "4"
    old = tmp_path / "v4.csv"
    v4.to_csv(old, index=False)
    upgraded = read_leaderboard(old)
    assert list(upgraded.columns) == COLUMNS and set(upgraded.schema_version) == {5}
    board = upgraded.set_index("scenario")
    assert board.loc["privacy-iid-local-eps4", "neighbouring_relation"] == "add/remove one image"
    assert board.epsilon_estimate.isna().all() and pd.isna(board.loc["privacy-iid-nodp", "neighbouring_relation"])


def test_read_leaderboard_refuses_other_schema_versions(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("suite,scenario\nx,y\n")  # version 1 had no schema_version column
    with pytest.raises(LeaderboardError, match="schema version 1"):
        read_leaderboard(old)
    with pytest.raises(LeaderboardError, match="does not exist"):
        read_leaderboard(tmp_path / "nope.csv")


# The CPU grid as published in results/privacy/ at c0c1ca9 (the privacy suite before its redesign; one
# seed per row), its columns brought to schema 4 (batch_size 32, no pretraining).
GRID_BOARD = REPO / "tests" / "data" / "grid-cpu-c0c1ca9-leaderboard.csv"
GRID_ATTACKS = REPO / "tests" / "data" / "grid-cpu-c0c1ca9-attacks.csv"


def test_published_leaderboard_regenerates_byte_identical(tmp_path):
    """A published leaderboard and attacks.csv from run folders rebuilt out of their own cells (one
    seed per row: every value round-trips through the CSV's float format), so a change of column
    order, aggregation or format shows here against the committed bytes."""
    import json

    from benchmark.rundir import RUN_FILES

    board = pd.read_csv(GRID_BOARD, dtype=str, keep_default_na=False)
    attacks = pd.read_csv(GRID_ATTACKS, dtype=str, keep_default_na=False)
    num = lambda v: None if v == "" else float(v)  # noqa: E731
    for _, r in board.iterrows():
        run = tmp_path / "runs" / r.suite / f"{r.scenario}-{r.scenario_hash}" / f"seed-{r.seeds}"
        run.mkdir(parents=True)
        ints = ("num_clients", "clients_per_round", "rounds", "local_epochs", "batch_size", "pretrain_epochs")
        (run / "scenario.json").write_text(json.dumps(
            {"name": r.scenario, "hash": r.scenario_hash, "seed": int(r.seeds), "delta": num(r.delta)}
            | {c: r[c] for c in ("suite", "scale", "dataset", "partition", "model", "dp_mode")}
            | {c: int(r[c]) for c in ints} | {"pretrain": r.pretrain or None}))
        m = {c: num(r[c]) for c in COLUMNS if DTYPES[c] == "float64" and not c.endswith("_std") and c != "delta"}
        m |= {"fid_impl": r.fid_impl, "fid_n_samples": int(r.fid_n_samples), "accountant": r.accountant or None,
              "mia_best_attack": r.mia_best_attack or None, "audit_unit": r.audit_unit or None,
              "audit_failed": {"True": True, "False": False, "": None}[r.audit_failed]}
        (run / "metrics.json").write_text(json.dumps(m))
        (run / "environment.json").write_text(json.dumps(
            {"device_name": r.device, "date": r.date} | {c: r[c] for c in ("git_sha", "torch", "opacus", "flwr",
                                                                           "diffusers")}))
        mine = attacks[(attacks.scenario == r.scenario) & (attacks.scenario_hash == r.scenario_hash)]
        (run / "attacks.json").write_text(json.dumps({"mia": {
            a.attack: {"auc": num(a.auc), "tpr_at_1pct_fpr": num(a.tpr_at_1pct_fpr),
                       "tpr_at_0_1pct_fpr": num(a.tpr_at_0_1pct_fpr), "epsilon_lb": num(a.epsilon_lb),
                       "n_members": int(a.n_members), "n_nonmembers": int(a.n_nonmembers)}
            for a in mine.itertuples()}}))
        for f in RUN_FILES:
            if not (run / f).exists():
                (run / f).write_text("")
    (path,) = summarize(tmp_path / "runs", tmp_path / "results", report=False)
    assert path.read_bytes() == GRID_BOARD.read_bytes()
    assert (path.parent / "attacks.csv").read_bytes() == GRID_ATTACKS.read_bytes()
