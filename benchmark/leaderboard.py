"""Leaderboards rebuilt from run folders: ``results/<suite>/leaderboard.csv``.

One row per (suite, scenario, scale, scenario_hash), aggregated over seeds (mean, and ``*_std``
with ddof=1, empty for a single seed). Only complete run folders are read. Rows and columns are in
a fixed order and floats are written with a fixed format, so summarizing the same runs twice
gives byte-identical files. Columns are documented in results/README.md.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.rundir import RUN_FILES, is_complete, write_atomic
from privacy.modes import dp_mode_names, get_dp_mode

# Version 2: schema_version column, run date, mia_best_attack, a *_std column for every metric the
# regression gate compares, attacks.csv. Bump it whenever a column is added, removed or changes meaning.
SCHEMA_VERSION = 2

# Metrics averaged over seeds, each followed by its <name>_std (ddof=1; empty for one seed).
MEAN_METRICS = ("fid", "kid", "downstream_acc", "mia_auc", "mia_tpr_at_1pct_fpr",
                "mia_tpr_at_0_1pct_fpr", "inversion_psnr", "inversion_ssim", "epsilon_empirical_lb")
COLUMNS = [
    "schema_version", "suite", "scenario", "scenario_hash", "scale", "dataset", "partition", "num_clients",
    "clients_per_round", "rounds", "local_epochs", "model", "dp_mode", "dp_level", "epsilon",
    "delta", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate",
    "fid", "fid_std", "fid_impl", "fid_n_samples", "kid", "kid_std", "downstream_acc", "downstream_acc_std",
    "mia_auc", "mia_auc_std", "mia_best_attack", "mia_tpr_at_1pct_fpr", "mia_tpr_at_1pct_fpr_std",
    "mia_tpr_at_0_1pct_fpr", "mia_tpr_at_0_1pct_fpr_std", "inversion_psnr", "inversion_psnr_std",
    "inversion_ssim", "inversion_ssim_std", "epsilon_empirical_lb", "epsilon_empirical_lb_std", "audit_failed",
    "n_seeds", "seeds", "train_s", "date", "device", "git_sha", "torch", "opacus", "flwr", "diffusers",
]
# What `read_leaderboard` asks pandas for (nullable types: an empty cell is "not computed").
_STR = ("suite", "scenario", "scenario_hash", "scale", "dataset", "partition", "model", "dp_mode", "dp_level",
        "accountant", "fid_impl", "mia_best_attack", "seeds", "date", "device", "git_sha", "torch", "opacus",
        "flwr", "diffusers")
_INT = ("schema_version", "num_clients", "clients_per_round", "rounds", "local_epochs", "fid_n_samples",
        "n_seeds")
DTYPES = {c: "string" if c in _STR else "Int64" if c in _INT else "boolean" if c == "audit_failed"
          else "float64" for c in COLUMNS}

# One row per (scenario definition, membership-inference attack), from each run's attacks.json.
ATTACK_METRICS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "epsilon_lb")
ATTACK_COLUMNS = [
    "schema_version", "suite", "scenario", "scenario_hash", "scale", "partition", "dp_mode", "epsilon", "attack",
    "auc", "auc_std", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "epsilon_lb", "n_members", "n_nonmembers",
    "n_seeds",
]
ATTACK_DTYPES = {c: "string" if c in ("suite", "scenario", "scenario_hash", "scale", "partition", "dp_mode",
                                      "attack")
                 else "Int64" if c in ("schema_version", "n_members", "n_nonmembers", "n_seeds") else "float64"
                 for c in ATTACK_COLUMNS}

# Privacy settings are the same for every seed of a scenario; epsilon is the max over seeds.
PRIVACY_FIELDS = ("epsilon", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate")
SCENARIO_FIELDS = ("dataset", "partition", "num_clients", "clients_per_round", "rounds",
                   "local_epochs", "model", "dp_mode", "delta")
PROVENANCE = ("device", "git_sha", "torch", "opacus", "flwr", "diffusers")
DP_LEVEL = {name: get_dp_mode(name).dp_level for name in dp_mode_names()}


class LeaderboardError(RuntimeError):
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


def _present(values: list) -> list[float]:
    """The values that were measured (None and NaN mean 'not computed for this seed')."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _mean(values: list) -> float | None:
    xs = _present(values)
    return sum(xs) / len(xs) if xs else None


def _std(values: list) -> float | None:
    xs = _present(values)
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _joined(values: list) -> str:
    uniq = sorted({str(v) for v in values if v is not None})
    return ";".join(uniq)


def aggregate(records: list[dict]) -> dict:
    """One leaderboard row from the runs (seeds) of one scenario definition."""
    sc = records[0]["scenario"]
    ms = [r["metrics"] for r in records]
    envs = [r["env"] for r in records]
    row: dict = {
        "schema_version": SCHEMA_VERSION,
        "suite": sc["suite"], "scenario": sc["name"], "scenario_hash": sc["hash"], "scale": sc["scale"],
        **{f: sc[f] for f in SCENARIO_FIELDS}, "dp_level": DP_LEVEL.get(sc["dp_mode"], ""),
    }
    for f in PRIVACY_FIELDS:
        vals = [m.get(f) for m in ms if m.get(f) is not None]
        if not vals:
            row[f] = None
        elif f == "epsilon":
            row[f] = max(float(v) for v in vals)
        else:
            row[f] = _joined(vals) if isinstance(vals[0], str) else _mean(vals)
    for f in MEAN_METRICS:
        row[f] = _mean([m.get(f) for m in ms])
        row[f"{f}_std"] = _std([m.get(f) for m in ms])
    row["train_s"] = _mean([m.get("train_s") for m in ms])
    row["fid_impl"] = _joined([m.get("fid_impl") for m in ms])
    row["mia_best_attack"] = _joined([m.get("mia_best_attack") for m in ms])
    row["fid_n_samples"] = min(int(m["fid_n_samples"]) for m in ms) if all("fid_n_samples" in m for m in ms) else None
    audits = [m.get("audit_failed") for m in ms if m.get("audit_failed") is not None]
    row["audit_failed"] = any(audits) if audits else None
    seeds = sorted(int(r["scenario"]["seed"]) for r in records)
    row["n_seeds"] = len(seeds)
    row["seeds"] = " ".join(str(s) for s in seeds)
    dates = [e["date"] for e in envs if e.get("date")]
    row["date"] = max(dates) if dates else None
    for f in PROVENANCE:
        row[f] = _joined([e.get(f if f != "device" else "device_name") for e in envs])
    return row


def aggregate_attacks(records: list[dict], row: dict) -> list[dict]:
    """One attacks.csv row per membership-inference attack run on this scenario (mean over seeds)."""
    per_attack: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        for attack, res in (r["attacks"].get("mia") or {}).items():
            per_attack[attack].append(res)
    out = []
    for attack in sorted(per_attack):
        res = per_attack[attack]
        a = {k: row[k] for k in ("suite", "scenario", "scenario_hash", "scale", "partition", "dp_mode", "epsilon")}
        a |= {"schema_version": SCHEMA_VERSION, "attack": attack, "n_seeds": len(res)}
        for f in ATTACK_METRICS:
            a[f] = _mean([x.get(f) for x in res])
        a["auc_std"] = _std([x.get("auc") for x in res])
        for f in ("n_members", "n_nonmembers"):
            a[f] = min(int(x[f]) for x in res) if all(x.get(f) is not None for x in res) else None
        out.append(a)
    return out


@dataclass
class SuiteResults:
    """Everything `summarize` writes for one suite, and the run folders it came from."""

    suite: str
    leaderboard: pd.DataFrame
    attacks: pd.DataFrame
    runs: dict[tuple[str, str], list[Path]] = field(default_factory=dict)  # (scenario, hash) -> by seed


def build_results(runs_dir: Path) -> dict[str, SuiteResults]:
    """suite -> its leaderboard, attack table and run folders, from the complete runs under ``runs_dir``."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in find_runs(runs_dir):
        rec = load_run(run)
        sc = rec["scenario"]
        groups[(sc["suite"], sc["name"], sc["scale"], sc["hash"])].append(rec)
    if not groups:
        raise LeaderboardError(f"no complete runs under {runs_dir}")
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


def build_leaderboards(runs_dir: Path) -> dict[str, pd.DataFrame]:
    """suite -> leaderboard DataFrame, from the complete runs under ``runs_dir``."""
    return {suite: r.leaderboard for suite, r in build_results(runs_dir).items()}


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
    df = pd.read_csv(path, dtype={c: t for c, t in DTYPES.items() if c in head.columns})
    if version is None:
        versions = set(df["schema_version"].dropna().astype(int))
        version = versions.pop() if len(versions) == 1 else None
    if version != SCHEMA_VERSION:
        raise LeaderboardError(f"{path}: schema version {version}, this bench reads version {SCHEMA_VERSION} "
                               f"(rebuild it with `bench summarize` from its run folders)")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise LeaderboardError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def summarize(runs_dir: Path, results_dir: Path, suites: list[str] | None = None,
              report: bool = True) -> list[Path]:
    """Write ``<results_dir>/<suite>/leaderboard.csv`` (and ``attacks.csv`` where attacks ran, the
    sample grids, the README and the plots of :mod:`benchmark.report`) for each suite found;
    return the leaderboard paths."""
    results = build_results(runs_dir)
    if suites is not None:
        missing = [s for s in suites if s not in results]
        if missing:
            raise LeaderboardError(f"no complete runs of suite(s) {', '.join(missing)} under {runs_dir}")
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
    copy_sample_grids(runs_dir, results_dir, suites=sorted(results))
    if report:
        from benchmark.report import write_report

        for suite, res in sorted(results.items()):
            write_report(res, Path(results_dir) / suite)
    return written


def copy_sample_grids(runs_dir: Path, results_dir: Path, suites: list[str]) -> list[Path]:
    """One sample grid per scenario definition: ``results/<suite>/samples/<scenario>-<hash>.png``,
    from its lowest seed. Grids of definitions no longer in the runs (a changed hash) are removed,
    as the leaderboard's rows are."""
    chosen: dict[tuple, tuple[int, Path]] = {}
    for run in find_runs(runs_dir):
        sc = json.loads((run / "scenario.json").read_text())
        if sc["suite"] not in suites:
            continue
        key = (sc["suite"], sc["name"], sc["hash"])
        if key not in chosen or sc["seed"] < chosen[key][0]:
            chosen[key] = (sc["seed"], run)
    out = []
    for (suite, name, h), (_seed, run) in sorted(chosen.items()):
        dest = Path(results_dir) / suite / "samples" / f"{name}-{h}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, (run / "samples.png").read_bytes())
        out.append(dest)
    for suite in suites:
        for stale in set((Path(results_dir) / suite / "samples").glob("*.png")) - set(out):
            stale.unlink(missing_ok=True)
    return out
