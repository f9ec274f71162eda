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
from pathlib import Path

import pandas as pd

from benchmark.runner import RUN_FILES, is_complete, write_atomic

SCHEMA_VERSION = 1

COLUMNS = [
    "suite", "scenario", "scenario_hash", "scale", "dataset", "partition", "num_clients",
    "clients_per_round", "rounds", "local_epochs", "model", "dp_mode", "dp_level", "epsilon",
    "delta", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate",
    "fid", "fid_std", "fid_impl", "fid_n_samples", "kid", "kid_std", "downstream_acc",
    "mia_auc", "mia_tpr_at_1pct_fpr", "mia_tpr_at_0_1pct_fpr", "inversion_psnr", "inversion_ssim",
    "epsilon_empirical_lb", "audit_failed", "n_seeds", "seeds", "train_s", "device", "git_sha",
    "torch", "opacus", "flwr", "diffusers",
]

# Metrics averaged over seeds; those listed in STD_OF also get a <name>_std column.
MEAN_METRICS = ("fid", "kid", "downstream_acc", "mia_auc", "mia_tpr_at_1pct_fpr",
                "mia_tpr_at_0_1pct_fpr", "inversion_psnr", "inversion_ssim",
                "epsilon_empirical_lb", "train_s")
STD_OF = ("fid", "kid")
# Privacy settings are the same for every seed of a scenario; epsilon is the max over seeds.
PRIVACY_FIELDS = ("epsilon", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate")
SCENARIO_FIELDS = ("dataset", "partition", "num_clients", "clients_per_round", "rounds",
                   "local_epochs", "model", "dp_mode", "delta")
PROVENANCE = ("device", "git_sha", "torch", "opacus", "flwr", "diffusers")
DP_LEVEL = {"none": "", "local-dpsgd": "sample", "central-dp": "client"}


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
    """One flat record: scenario fields, seed, metrics and environment of a run folder."""
    scenario = json.loads((run / "scenario.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    env = json.loads((run / "environment.json").read_text())
    return {"scenario": scenario, "metrics": metrics, "env": env}


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
    for f in STD_OF:
        row[f"{f}_std"] = _std([m.get(f) for m in ms])
    row["fid_impl"] = _joined([m.get("fid_impl") for m in ms])
    row["fid_n_samples"] = min(int(m["fid_n_samples"]) for m in ms) if all("fid_n_samples" in m for m in ms) else None
    audits = [m.get("audit_failed") for m in ms if m.get("audit_failed") is not None]
    row["audit_failed"] = any(audits) if audits else None
    seeds = sorted(int(r["scenario"]["seed"]) for r in records)
    row["n_seeds"] = len(seeds)
    row["seeds"] = " ".join(str(s) for s in seeds)
    for f in PROVENANCE:
        row[f] = _joined([e.get(f if f != "device" else "device_name") for e in envs])
    return row


def build_leaderboards(runs_dir: Path) -> dict[str, pd.DataFrame]:
    """suite -> leaderboard DataFrame, from the complete runs under ``runs_dir``."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in find_runs(runs_dir):
        rec = load_run(run)
        sc = rec["scenario"]
        groups[(sc["suite"], sc["name"], sc["scale"], sc["hash"])].append(rec)
    if not groups:
        raise LeaderboardError(f"no complete runs under {runs_dir}")
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for key in sorted(groups):
        recs = sorted(groups[key], key=lambda r: r["scenario"]["seed"])
        by_suite[key[0]].append(aggregate(recs))
    return {suite: pd.DataFrame(rows, columns=COLUMNS) for suite, rows in by_suite.items()}


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, float_format="%.10g", lineterminator="\n").encode()


def summarize(runs_dir: Path, results_dir: Path, suites: list[str] | None = None) -> list[Path]:
    """Write ``<results_dir>/<suite>/leaderboard.csv`` for each suite found; return the paths."""
    boards = build_leaderboards(runs_dir)
    if suites is not None:
        missing = [s for s in suites if s not in boards]
        if missing:
            raise LeaderboardError(f"no complete runs of suite(s) {', '.join(missing)} under {runs_dir}")
        boards = {s: boards[s] for s in suites}
    written = []
    for suite, df in sorted(boards.items()):
        path = Path(results_dir) / suite / "leaderboard.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, to_csv_bytes(df))
        written.append(path)
    copy_sample_grids(runs_dir, results_dir, suites=sorted(boards))
    return written


def copy_sample_grids(runs_dir: Path, results_dir: Path, suites: list[str]) -> list[Path]:
    """One sample grid per scenario definition: ``results/<suite>/samples/<scenario>-<hash>.png``,
    from its lowest seed."""
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
    return out
