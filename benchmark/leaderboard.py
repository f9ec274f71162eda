"""Leaderboards rebuilt from run folders: ``results/<suite>/leaderboard.csv``.

One row per (suite, scenario, scale, scenario_hash), aggregated over seeds (mean, and ``*_std``
with ddof=1, empty for a single seed). Only complete run folders are read. Rows and columns are in
a fixed order and floats are written with a fixed format, so summarizing the same runs twice
gives byte-identical files. The columns and their aggregation are declared in :mod:`benchmark.schema`
(documented in results/README.md).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from benchmark import schema
from benchmark.rundir import RUN_FILES, is_complete, publish_run_files, write_atomic
from benchmark.schema import ATTACK_COLUMNS, COLUMNS, DTYPES, SCHEMA_VERSION


class LeaderboardError(ValueError):
    """Runs cannot be summarised (one-line message)."""


def find_runs(runs_dir: Path) -> list[Path]:
    """Every complete run folder under ``runs_dir`` (partial and hidden folders are skipped)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise LeaderboardError(f"runs folder {runs_dir} does not exist")
    found = []
    for marker in sorted(runs_dir.rglob(RUN_FILES[-1])):
        run = marker.parent
        if any(part.startswith(".") for part in run.relative_to(runs_dir).parts):
            continue
        if is_complete(run):
            found.append(run)
    return found


# The files whose bytes make a run's result: two copies of a run are the same result if these agree.
RESULT_FILES = ("scenario.json", "metrics.json", "environment.json")


def merged_runs(runs_dirs) -> list[Path]:
    """Every complete run folder of the trees ``runs_dirs`` (one path or several: the trees of a
    suite's shards), one per run (suite, scenario, hash, seed). The same run in two trees must be
    the same result (:data:`RESULT_FILES` byte-identical, as a copy is); two different results of
    one run are refused in one line naming both, for no leaderboard can hold both."""
    dirs = [Path(runs_dirs)] if isinstance(runs_dirs, (str, Path)) else [Path(d) for d in runs_dirs]
    seen: dict[tuple, Path] = {}
    for d in dirs:
        for run in find_runs(d):
            key = run.relative_to(d).parts  # <suite>/<scenario>-<hash>/seed-<k>
            if key not in seen:
                seen[key] = run
                continue
            other = seen[key]
            differ = [f for f in RESULT_FILES if (run / f).read_bytes() != (other / f).read_bytes()]
            if differ:
                raise LeaderboardError(f"two different results for run {'/'.join(key)}: {other} and {run} "
                                       f"({', '.join(differ)} differ); keep one of them")
    return [seen[k] for k in sorted(seen)]


def _where(runs_dirs) -> str:
    return str(runs_dirs) if isinstance(runs_dirs, (str, Path)) else ", ".join(map(str, runs_dirs))


def missing_runs(runs_dirs, suites: list[str] | None = None) -> dict[str, list[str]]:
    """suite -> the runs its definition plans that no tree holds (``<scenario> seed <k>``), for each
    registered suite found in the trees (a scenario file's runs have no plan to miss)."""
    from benchmark.suites import get_suite, suite_names

    found: dict[str, set] = defaultdict(set)
    scales: dict[str, set] = defaultdict(set)
    for run in merged_runs(runs_dirs):
        sc = json.loads((run / "scenario.json").read_text())
        found[sc["suite"]].add((sc["name"], sc["hash"], int(sc["seed"])))
        scales[sc["suite"]].add(sc["scale"])
    out = {}
    for suite in sorted(found):
        if suite not in suite_names() or (suites is not None and suite not in suites):
            continue
        planned = [(s.name, s.hash, seed) for scale in sorted(scales[suite]) for s in get_suite(suite, scale)
                   for seed in s.seeds]
        gone = [f"{name} seed {seed}" for name, h, seed in planned if (name, h, seed) not in found[suite]]
        if gone:
            out[suite] = gone
    return out


def load_run(run: Path) -> dict:
    """One record: scenario, metrics, environment (and attacks, where run) of a run folder."""
    rec = {"path": run}
    for key, name in (("scenario", "scenario.json"), ("metrics", "metrics.json"), ("env", "environment.json"),
                      ("attacks", "attacks.json")):
        f = run / name
        if key == "attacks" and not f.exists():
            rec[key] = {}
            continue
        try:
            rec[key] = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LeaderboardError(f"{f}: unreadable ({e})") from None
    return rec


def aggregate(records: list[dict]) -> dict:
    """One leaderboard row from the runs (seeds) of one scenario definition (see :mod:`benchmark.schema`)."""
    return schema.aggregate(schema.LEADERBOARD, {"scenario": [r["scenario"] for r in records],
                                                 "metric": [r["metrics"] for r in records],
                                                 "environment": [r["env"] for r in records],
                                                 "audit": [r["attacks"].get("audit") or {} for r in records],
                                                 "canaries": [r["attacks"].get("gradient_canaries") or {}
                                                              for r in records]})


def aggregate_attacks(records: list[dict], row: dict) -> list[dict]:
    """One attacks.csv row per membership-inference attack run on this scenario (mean over seeds)."""
    per_attack: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        for attack, res in (r["attacks"].get("mia") or {}).items():
            per_attack[attack].append(res)
    return [schema.aggregate(schema.ATTACKS, {"row": [row], "attack": per_attack[attack], "name": attack})
            for attack in sorted(per_attack)]


@dataclass
class SuiteResults:
    """Everything `summarize` writes for one suite, and the run folders it came from."""

    suite: str
    leaderboard: pd.DataFrame
    attacks: pd.DataFrame
    runs: dict[tuple[str, str], list[Path]] = field(default_factory=dict)  # (scenario, hash) -> by seed


def build_results(runs_dir) -> dict[str, SuiteResults]:
    """suite -> its leaderboard, attack table and run folders, from the complete runs under
    ``runs_dir`` (one tree or several: :func:`merged_runs`)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in merged_runs(runs_dir):
        rec = load_run(run)
        sc = rec["scenario"]
        groups[(sc["suite"], sc["name"], sc["scale"], sc["hash"])].append(rec)
    if not groups:
        raise LeaderboardError(f"no complete runs under {_where(runs_dir)}")
    rows: dict[str, list[dict]] = defaultdict(list)
    attack_rows: dict[str, list[dict]] = defaultdict(list)
    runs: dict[str, dict] = defaultdict(dict)
    for key in sorted(groups):
        recs = sorted(groups[key], key=lambda r: r["scenario"]["seed"])
        row = aggregate(recs)
        rows[key[0]].append(row)
        attack_rows[key[0]].extend(aggregate_attacks(recs, row))
        runs[key[0]][(key[1], key[3])] = [r["path"] for r in recs]
    return {suite: SuiteResults(suite, pd.DataFrame(rows[suite], columns=COLUMNS),
                                pd.DataFrame(attack_rows[suite], columns=ATTACK_COLUMNS), runs[suite])
            for suite in rows}


def _float(x: float) -> str:
    """10 significant digits, and always a float to the eye ("2.0", not "2"), so that a plain
    ``pandas.read_csv`` infers float64 for a float column whose values happen to be whole."""
    s = f"{x:.10g}"
    return s if any(c in s for c in ".eEn") else s + ".0"


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, float_format=_float, lineterminator="\n").encode()


def read_leaderboard(path: Path) -> pd.DataFrame:
    """A leaderboard CSV with the documented dtypes (empty cells are <NA>/NaN)."""
    path = Path(path)
    if not path.is_file():
        raise LeaderboardError(f"leaderboard {path} does not exist")
    try:
        head = pd.read_csv(path, nrows=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise LeaderboardError(f"{path}: not a leaderboard CSV ({str(e).splitlines()[0] if str(e) else e})") \
            from None
    version = 1 if "schema_version" not in head.columns else None
    try:
        df = pd.read_csv(path, dtype={c: t for c, t in DTYPES.items() if c in head.columns})
    except (ValueError, TypeError, pd.errors.ParserError) as e:  # a cell that is not its column's type
        raise LeaderboardError(f"{path}: not a leaderboard CSV ({str(e).splitlines()[0] if str(e) else e})") \
            from None
    if version is None:
        versions = set(df["schema_version"].dropna().astype(int))
        version = versions.pop() if len(versions) == 1 else None
    if version in schema.UPGRADES and version != SCHEMA_VERSION:
        df = _upgrade(df, version)
        version = SCHEMA_VERSION
    if version != SCHEMA_VERSION:
        raise LeaderboardError(f"{path}: schema version {version}, this bench reads version {SCHEMA_VERSION} "
                               f"(rebuild it with `bench summarize` from its run folders)")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise LeaderboardError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def _upgrade(df: pd.DataFrame, version: int) -> pd.DataFrame:
    """A board of an older schema version with the columns it lacks filled as
    :data:`benchmark.schema.UPGRADES` says (derived from the row, or empty), in the current order."""
    df = df.copy()
    for name, fill in schema.UPGRADES[version].items():
        if name not in df.columns:
            values = [None if fill is None else fill(row) for row in df.to_dict("records")]
            df[name] = pd.Series(values, index=df.index, dtype=DTYPES[name])
    df["schema_version"] = pd.Series([SCHEMA_VERSION] * len(df), index=df.index, dtype=DTYPES["schema_version"])
    return df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]


def summarize(runs_dir, results_dir: Path, suites: list[str] | None = None,
              report: bool = True) -> list[Path]:
    """Write ``<results_dir>/<suite>/leaderboard.csv`` (and ``attacks.csv`` where attacks ran, the
    sample grids, the README and the plots of :mod:`benchmark.report`) for each suite found in
    ``runs_dir`` (a tree of run folders, or several: :func:`merged_runs`); return the leaderboard
    paths."""
    results = build_results(runs_dir)
    if suites is not None:
        missing = [s for s in suites if s not in results]
        if missing:
            raise LeaderboardError(f"no complete runs of suite(s) {', '.join(missing)} under {_where(runs_dir)}")
        results = {s: results[s] for s in suites}
    written = []
    for suite, res in sorted(results.items()):
        out = Path(results_dir) / suite
        out.mkdir(parents=True, exist_ok=True)
        path = out / "leaderboard.csv"
        write_atomic(path, to_csv_bytes(res.leaderboard))
        if len(res.attacks):
            write_atomic(out / "attacks.csv", to_csv_bytes(res.attacks))
        else:  # none of these runs has attacks: an older attacks.csv would describe other runs
            (out / "attacks.csv").unlink(missing_ok=True)
        written.append(path)
    for suite, res in sorted(results.items()):  # one sample grid per definition, from its lowest seed
        publish_run_files(res.runs, Path(results_dir) / suite / "samples", "samples.png")
    if report:
        from benchmark.report import write_report

        for suite, res in sorted(results.items()):
            write_report(res, Path(results_dir) / suite)
    return written


class RowAudit(NamedTuple):
    """One audited leaderboard row, as published (``audit_verdict`` and the columns it is read from)."""

    suite: str
    scenario: str
    verdict: str        # failed, passed, inconclusive
    bound: float | None
    ceiling: float | None
    claim: float | None
    unit: str
    n_seeds: int

    @property
    def label(self) -> str:
        return f"{self.suite}/{self.scenario}"


def row_audits(paths, scenarios=None) -> list[RowAudit]:
    """The audited rows (a claim, so a verdict) of the leaderboards ``paths``, in board order; only
    the rows of ``scenarios`` ((name, scenario hash) pairs: a board may also hold an older
    definition's row from the same run folder tree) where given. The one rule of the audit: a row's verdict is its
    seeds' at 95 % for the row (:func:`attacks.audit.seeds_judgement`), the verdict ``bench run``'s
    exit status and ``bench compare`` read too."""
    def num(x):
        return None if pd.isna(x) else float(x)

    out = []
    for path in paths:
        for r in read_leaderboard(path).to_dict("records"):
            verdict = r.get("audit_verdict")
            if pd.isna(verdict) or (scenarios is not None and (r["scenario"], r["scenario_hash"]) not in scenarios):
                continue
            unit = r.get("audit_unit")
            out.append(RowAudit(str(r["suite"]), str(r["scenario"]), str(verdict), num(r["epsilon_empirical_lb"]),
                                num(r["audit_ceiling"]), num(r["epsilon_audited"]),
                                "" if pd.isna(unit) else str(unit), int(r["n_seeds"])))
    return out
