"""What people look at instead of the CSV: ``results/<suite>/README.md`` and its plots.

Written by :func:`benchmark.leaderboard.summarize` (so by ``bench summarize`` and ``bench run``)
next to ``leaderboard.csv``:

    README.md          the leaderboard as Markdown tables, provenance, failed audits first, and the
                       suite's declared comparisons (A - B with its 95 % interval over seeds,
                       significant or not; benchmark/comparisons.py)
    frontier.png       utility-privacy frontier: FID (and downstream accuracy) vs epsilon, one line per
                       family of rows that differ only in epsilon; error bars: each mean's 95 %
                       t-interval over seeds
    attack_vs_epsilon.png  best membership-inference attack's AUC and TPR at 1% FPR vs epsilon
    roc.png            best attack's ROC per scenario (log-log, LiRA convention)
    roc/<scenario>-<hash>.png  every attack's ROC for one scenario
    inversion/<scenario>-<hash>.png  the gradient-inversion figure of its lowest seed (where it ran)
    samples.png        every scenario's sample grid with its epsilon and FID

Plots that would be empty (no attacks yet, one scenario without DP) are not drawn. Everything is
a function of the run folders, so rebuilding gives the same files.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from attacks.base import auc, draw_roc
from attacks.base import best_attack as _best
from benchmark import schema
from benchmark.comparisons import Measured, Unmeasured, measure
from benchmark.intervals import TOO_FEW, mean_halfwidth
from benchmark.rundir import publish_run_files, write_atomic, write_png
from privacy.mechanisms import get_mechanism, mechanism_names

NO_DP = next(n for n in mechanism_names() if not get_mechanism(n).private)  # the registry's non-private mechanism


class ReportError(ValueError):
    """A run folder's file cannot be read for the report (one-line message)."""


def _finite(x) -> bool:
    return x is not None and not pd.isna(x) and math.isfinite(float(x))


def _fmt(x, spec: str = ".3g", std=None) -> str:
    if not _finite(x):
        return ""
    s = format(float(x), spec)
    return s + (f" ± {format(float(std), spec)}" if _finite(std) else "")


def _figure(**kw):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(**kw)


def _save(fig, path: Path) -> Path:
    """A report figure, at the report's resolution, closed after (:func:`benchmark.rundir.write_png`)."""
    write_png(path, fig, dpi=110, bbox_inches="tight")
    return path


def _lines(df: pd.DataFrame, ax, y: str, ystd: str | None, ylabel: str, chance: float | None = None,
           legend: bool = True) -> bool:
    """One line per (dp_mode, partition) over epsilon; rows without DP as a dashed level per partition
    (the public-only reference, a dotted level of its own); error bars and bands: each mean's 95 %
    t-interval over its seeds (:func:`_halfwidths`)."""
    drew = False
    dp = df[(df["dp_mode"] != NO_DP) & df["epsilon"].notna() & df[y].notna()]
    # One line per family of rows that differ only in epsilon: same mode, partition and scenario name
    # but for its epsilon (an adaptive-clipping row beside the fixed-clip ones is a point of its own).
    dp = dp.assign(_family=[re.sub(r"eps[0-9.]+", "eps*", str(n)) for n in dp["scenario"]])
    for (mode, part), modes in dp.groupby(["dp_mode", "partition"], sort=True):
        families = modes.groupby("_family", sort=True)
        for family, g in families:
            g = g.sort_values("epsilon")
            err = _halfwidths(g, ystd) if ystd else None
            ax.errorbar(g["epsilon"].to_numpy(float), g[y].to_numpy(float), yerr=err, marker="o", capsize=3,
                        label=f"{mode}, {part}" if families.ngroups == 1 else family)
            drew = True
    nodp = df[(df["dp_mode"] == NO_DP) & df[y].notna()]
    # A public-only row (rounds = 0: the public checkpoint, no private image) is a level of its own.
    levels = nodp.assign(_level=["public data only (no private training)" if r == 0 else f"no DP, {p}"
                                 for r, p in zip(nodp["rounds"], nodp["partition"])])
    for i, (label, g) in enumerate(levels.groupby("_level", sort=True)):
        level, color = float(g[y].mean()), f"C{7 + i % 3}"
        ax.axhline(level, ls="--" if label.startswith("no DP") else (0, (1, 1)), color=color, label=label)
        half = _halfwidths(g, ystd) if ystd else np.array([np.nan])
        spread = float(np.nanmean(half)) if np.isfinite(half).any() else None
        if spread:  # the level's 95 % interval over seeds, as the DP points' error bars
            ax.axhspan(level - spread, level + spread, color=color, alpha=0.15, lw=0)
        drew = True
    if chance is not None:
        ax.axhline(chance, ls=":", color="k", lw=1, label="chance")
        if not legend:  # no legend on this panel: the line says what it is
            ax.annotate(f"chance ({chance:g})", xy=(0.99, chance), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=7)
    if len(dp):  # log axis, labelled at the epsilons that were run
        eps = sorted({float(f"{e:.2g}") for e in dp["epsilon"]})  # 0.996 and 0.9997: one tick
        ax.set_xscale("log")
        ax.set_xlim(eps[0] / 1.6, eps[-1] * 1.6)
        ax.set_xticks(eps, [f"{e:g}" for e in eps])
        ax.minorticks_off()
    ax.set_xlabel("epsilon (claimed, at delta)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if drew and legend:  # beside the axes, never over the points
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return drew


def _halfwidths(g: pd.DataFrame, ystd: str) -> np.ndarray:
    """Each row's error bar: half its 95 % t-interval of the mean over its seeds (from the board's
    ``<column>_std`` and ``n_seeds``); NaN, no bar, for a row of one seed."""
    out = [mean_halfwidth(None if pd.isna(s) else float(s), None if pd.isna(n) else int(n))
           for s, n in zip(g[ystd], g["n_seeds"])]
    return np.array([np.nan if h is None else h for h in out], float)


# What the error bars are, in the plots' words.
ERROR_BARS = "error bars and shaded bands: 95% t-interval of the mean over seeds (none for a one-seed point)"


def _subtitle(df: pd.DataFrame) -> str:
    scale = ";".join(sorted(set(df["scale"].dropna())))
    seeds = ";".join(sorted({str(int(n)) for n in df["n_seeds"].dropna()}))
    return f"scale {scale}, {seeds} seed(s) per point"


def plot_frontier(df: pd.DataFrame, path: Path) -> Path | None:
    """FID vs epsilon (the utility-privacy frontier), and beside it downstream accuracy vs epsilon
    where the rows are class-conditional (FID scores the images' marginal look; the classifier
    whether a sample is the digit it was asked for); error bars are each mean's 95 % t-interval over
    its seeds (:func:`benchmark.intervals.mean_halfwidth`), none for a row of one seed."""
    if not df["fid"].notna().any() or not (df["dp_mode"] != NO_DP).any():
        return None
    acc = "downstream_acc" in df and bool(df["downstream_acc"].notna().any())
    if acc:
        plt, fig, (ax_acc, ax) = _figure(ncols=2, figsize=(13.5, 4.4))  # the legend goes right of FID
        _lines(df, ax_acc, "downstream_acc", "downstream_acc_std",
               "downstream accuracy (higher is better)\nmean ± 95% CI over seeds", chance=0.1, legend=False)
        ax_acc.set_title("classifier trained on the samples, tested on real images", fontsize=9)
    else:
        plt, fig, ax = _figure(figsize=(8.4, 4.4))
    _lines(df, ax, "fid", "fid_std", "FID (lower is better)\nmean ± 95% CI over seeds")
    floors = df["fid_floor"].dropna() if "fid_floor" in df else pd.Series(dtype=float)
    if len(floors):  # what real images score at the same n: a perfect generator's FID, not 0
        ax.axhline(float(floors.mean()), ls="-.", color="k", lw=1,
                   label=f"floor: real vs real at this n ({float(floors.mean()):.1f})")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    impl = ";".join(sorted(set(df["fid_impl"].dropna())))
    n = ";".join(sorted({str(int(x)) for x in df["fid_n_samples"].dropna()}))
    ax.set_title(f"{df['suite'].iloc[0]}: utility vs privacy\n{_subtitle(df)}; FID at n = {n}", fontsize=9)
    one_seed = bool((df["n_seeds"].dropna() <= 1).all())
    fig.text(0.01, -0.08, f"fid_impl: {impl}\n" + (
        "one seed per point: no error bars, the spread between runs is unknown (more seeds draw it)" if one_seed
        else ERROR_BARS), fontsize=7)
    return _save(fig, path)


def plot_attack_vs_epsilon(df: pd.DataFrame, path: Path) -> Path | None:
    if not df["mia_auc"].notna().any():
        return None
    plt, fig, (a, b) = _figure(ncols=2, figsize=(12, 4.2))
    _lines(df, a, "mia_auc", "mia_auc_std", "best MIA AUC (lower is better)", chance=0.5, legend=False)
    _lines(df, b, "mia_tpr_at_1pct_fpr", "mia_tpr_at_1pct_fpr_std", "TPR at 1% FPR (lower is better)",
           chance=0.01)
    fig.suptitle(f"{df['suite'].iloc[0]}: membership inference vs epsilon ({_subtitle(df)}; {ERROR_BARS})",
                 fontsize=9)
    return _save(fig, path)


def attack_scores(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """attack name (with '_', as stored) -> (scores, labels) from a run's attack_scores.npz, if any."""
    f = run / "attack_scores.npz"
    if not f.exists():
        return {}
    try:
        with np.load(f) as z:
            names = sorted(k[: -len("_scores")] for k in z.files if k.endswith("_scores"))
            missing = [n for n in names if f"{n}_labels" not in z.files]
            if missing:
                raise ReportError(f"{f}: {missing[0]}_scores has no {missing[0]}_labels")
            out = {n: (z[f"{n}_scores"], z[f"{n}_labels"]) for n in names}
    except (OSError, ValueError) as e:
        raise ReportError(f"{f}: unreadable ({e})") from None
    for n, (s, y) in out.items():
        if s.shape != y.shape or s.ndim != 1 or not set(np.unique(y)) <= {0, 1}:
            raise ReportError(f"{f}: {n} needs 1-d scores and 0/1 labels of the same length")
    return out


def best_attack(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> str | None:
    """The attack (stored name) with the highest AUC on the natural candidates; canary sets
    (``*_canary``) are planted outliers and never the row's best, as in the leaderboard. Ties: the
    run's own rule (``attacks.base.best_attack``)."""
    return _best({n: auc(s, y) for n, (s, y) in scores.items() if not n.endswith("_canary")})


def plot_rocs(df: pd.DataFrame, runs: dict, out_dir: Path) -> list[Path]:
    """roc/<scenario>-<hash>.png for every scenario with attack scores (its lowest seed), canary
    sets included, and roc.png with the best attack (highest AUC) of each scenario on its natural
    candidates (the leaderboard's ``mia_*`` columns; canaries are planted outliers)."""
    from attacks.base import roc_curve, tpr_at_fpr

    written, best = [], []
    for _, row in df.iterrows():
        paths = runs.get((row["scenario"], row["scenario_hash"]))
        scores = attack_scores(paths[0]) if paths else {}
        if not scores:
            continue
        plt, fig, ax = _figure(figsize=(4.6, 4.2))
        n_non, top, pick, curves = 1, None, best_attack(scores), []
        for name, (s, y) in scores.items():
            fpr, tpr, _ = roc_curve(s, y)
            auc_ = auc(s, y)
            n_non = max(n_non, int((np.asarray(y) == 0).sum()))
            curves.append((f"{name.replace('_', '-')}: AUC {auc_:.3f}, TPR@1% {tpr_at_fpr(s, y, 0.01):.3f}", fpr, tpr))
            if name == pick:
                top = (auc_, name, fpr, tpr)
        draw_roc(ax, curves, n_non)
        ax.legend(fontsize=6, loc="lower right")
        eps = f"epsilon {row['epsilon']:.3g}" if _finite(row["epsilon"]) else "no DP"
        if top is not None:
            best.append((row["scenario"], eps, n_non, top))
        seed = paths[0].name
        ax.set_title(f"{row['scenario']} ({eps}, {seed})", fontsize=8)
        written.append(_save(fig, out_dir / "roc" / f"{row['scenario']}-{row['scenario_hash']}.png"))
    if best:
        plt, fig, ax = _figure(figsize=(9.6, 5.2))
        suite = str(df["suite"].iloc[0])
        draw_roc(ax, [(f"{_short(scenario, suite)} ({eps}): {name.replace('_', '-')}, AUC {best_auc:.3f}", fpr, tpr)
                      for scenario, eps, _n, (best_auc, name, fpr, tpr) in best], max(b[2] for b in best))
        modes = {str(r["scenario"]): str(r["dp_mode"]) for _, r in df.iterrows()}
        _distinct(ax.get_lines()[:len(best)], [modes.get(b[0], "") for b in best])
        # The legend beside the axes, never over the curves; one entry per scenario.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                  title="scenario (claimed epsilon): best attack", title_fontsize=7)
        ax.set_title(f"{suite}: best membership-inference attack per scenario\n(line style: dp_mode; "
                     f"log-log, the lower left is the low-FPR regime)", fontsize=9)
        written.append(_save(fig, out_dir / "roc.png"))
    return written


# Line styles by dp_mode (the registry's modes in order) and 10 colours of tab10 x 2 of tab20's
# lighter shades: up to 20 curves of which no two look alike.
_STYLES = ("-", "--", "-.", (0, (1, 1)))


def _short(scenario: str, suite: str) -> str:
    """A scenario's name without its suite's prefix (the plot's title names the suite)."""
    return scenario[len(suite) + 1:] if scenario.startswith(suite + "-") else scenario


def _distinct(lines, modes: list[str]) -> None:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    names = mechanism_names()
    for i, (line, mode) in enumerate(zip(lines, modes)):
        line.set_color(cmap((2 * i) % 20 + (i // 10) % 2))
        line.set_linestyle(_STYLES[names.index(mode) % len(_STYLES)] if mode in names else "-")
        line.set_linewidth(1.6)


def plot_samples(df: pd.DataFrame, runs: dict, path: Path) -> Path | None:
    """Each scenario's sample grid (its lowest seed), titled with epsilon and FID."""
    from PIL import Image

    panels = []
    # No DP first, then by falling epsilon (the order the eye reads the price of privacy in).
    order = sorted(df.index, key=lambda i: (_finite(df.at[i, "epsilon"]),
                                            -float(df.at[i, "epsilon"]) if _finite(df.at[i, "epsilon"]) else 0.0,
                                            str(df.at[i, "scenario"])))
    for _, row in df.loc[order].iterrows():
        paths = runs.get((row["scenario"], row["scenario_hash"]))
        if paths and (paths[0] / "samples.png").exists():
            try:
                with Image.open(paths[0] / "samples.png") as im:
                    panels.append((row, np.asarray(im.convert("RGB"))))
            except OSError as e:  # PIL's UnidentifiedImageError is an OSError
                raise ReportError(f"{paths[0] / 'samples.png'}: unreadable ({e})") from None
    if not panels:
        return None
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    plt, fig, axes = _figure(nrows=nrow, ncols=ncol, figsize=(3.2 * ncol, 3.6 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (row, img) in zip(axes.flat, panels):
        ax.imshow(img, interpolation="nearest")
        eps = f"eps {row['epsilon']:.3g}" if _finite(row["epsilon"]) else "no DP"
        ax.set_title(f"{row['scenario']}\n{eps}, FID {_fmt(row['fid'], '.1f')}", fontsize=7)
    return _save(fig, path)


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# Cells that are more than the column's value (formatted by its Shown.fmt, with its std if Shown.std).
_CELLS = {
    "scenario": lambda r: f"`{r.scenario}`",
    "dp_mode": lambda r: "none" if r.dp_mode == NO_DP else f"{r.dp_mode} ({r.dp_level})",
    "mia_auc": lambda r: _fmt(r.mia_auc, ".3f", r.mia_auc_std)
    + (f" ({r.mia_best_attack})" if _finite(r.mia_auc) and not pd.isna(r.mia_best_attack) else ""),
    "audit_verdict": lambda r: "" if pd.isna(r.audit_verdict) else ("**FAILED**" if r.audit_verdict == "failed"
                                                                     else str(r.audit_verdict)),
}


def _cell(r, col: schema.Column) -> str:
    """One cell of the leaderboard table (``r`` a row of ``DataFrame.itertuples``)."""
    shown = col.report
    if shown.when and not _finite(getattr(r, shown.when)):
        return ""
    if col.name in _CELLS:
        return _CELLS[col.name](r)
    value = getattr(r, col.name)
    if col.dtype == "float":
        return _fmt(value, shown.fmt, getattr(r, f"{col.name}_std") if shown.std else None)
    return "" if pd.isna(value) else str(value)


def planted_rows(runs: dict) -> dict[str, str]:
    """scenario -> its planted defect (``plant``, privacy/plants.py), from the runs' scenario.json."""
    out = {}
    for (scenario, _hash), paths in runs.items():
        for path in paths[:1]:
            plant = json.loads((Path(path) / "scenario.json").read_text()).get("plant")
            if plant:
                out[scenario] = plant
    return out


def _unit(r) -> str:
    unit = getattr(r, "audit_unit", None)
    return "" if unit is None or pd.isna(unit) or unit == "image" else f", {unit} level"


def planted_lines(df: pd.DataFrame, plants: dict[str, str]) -> list[str]:
    """One line per planted row: which defect, and whether the audit caught it (failed the row)."""
    from privacy.plants import PLANTS

    out = []
    for r in df.itertuples():
        plant = plants.get(r.scenario)
        if plant:
            caught = not pd.isna(r.audit_failed) and bool(r.audit_failed)
            desc = PLANTS[plant].description if plant in PLANTS else plant
            out.append(f"`{r.scenario}`: {plant} ({desc}): "
                       + (f"**caught** (lower bound {_fmt(r.epsilon_empirical_lb)} > claim {_fmt(r.epsilon_audited)}"
                          f"{_unit(r)})"
                          if caught else f"**missed** (lower bound {_fmt(r.epsilon_empirical_lb)}, claim "
                                         f"{_fmt(r.epsilon_audited)}{_unit(r)}, ceiling {_fmt(r.audit_ceiling)})"))
    return out


COMPARISONS_HEADING = "## Comparisons (95% intervals over seeds)"


def _signed(x, spec: str) -> str:
    """``x`` with its sign; a non-zero value that would read as 0 at ``spec`` with two significant digits."""
    text = format(float(x), "+" + spec)
    return format(float(x), "+.2g") if float(x) != 0 and float(text) == 0 else text


def comparison_lines(measured: list[Measured], unmeasured: list[Unmeasured], suite: str) -> list[str]:
    """The report's comparisons section: one table row per declared comparison and column
    (:mod:`benchmark.comparisons`); nothing for a suite that declares none."""
    if not measured and not unmeasured:
        return []
    scales = sorted({m.scale for m in measured} | {u.scale for u in unmeasured})
    shown = {c.name: c.report for c in schema.LEADERBOARD if c.report}
    lines = [COMPARISONS_HEADING, "",
             "A - B: the difference of the two rows' means over seeds, with its 95% t-interval: paired by "
             "seed over the seeds both rows ran (seed k is the same data split and initialisation in every "
             "row of a suite), Welch's where they share fewer than 2; significant where the interval "
             "excludes 0. Each interval is at 95% on its own, not corrected for the number of comparisons. "
             "Declared in `benchmark/comparisons.py`; arrows: which direction is better.", ""]
    for scale in scales:
        rows = [m for m in measured if m.scale == scale]
        sig = sum(m.difference.significant for m in rows)
        if len(scales) > 1:
            lines += [f"### Scale `{scale}`", ""]
        if rows:
            lines += [f"{sig} of {len(rows)} differences significant.", ""]
            table = []
            for m in rows:
                d, fmt = m.difference, shown[m.column].fmt if m.column in shown else ".3g"
                verdict = f"**{m.verdict}**" if d.significant else m.verdict
                table.append([m.comparison.what, f"`{_short(m.comparison.a, suite)}`",
                              f"`{_short(m.comparison.b, suite)}`",
                              shown[m.column].header if m.column in shown else m.column,
                              "" if d.diff is None else _signed(d.diff, fmt),
                              "" if d.lo is None else f"[{_signed(d.lo, fmt)}, {_signed(d.hi, fmt)}]",
                              "" if d.method == TOO_FEW else d.method,
                              str(d.n_a) if d.paired else f"{d.n_a} + {d.n_b}", verdict])
            lines += [_table(["comparison", "A", "B", "metric", "A - B", "95% interval", "test", "seeds",
                              "result"], table), ""]
        gone = [u for u in unmeasured if u.scale == scale]
        if gone:
            lines += ["Declared, not in these runs: " + "; ".join(
                f"{u.comparison.what} ({', '.join(f'`{_short(n, suite)}`' for n in u.missing)} not run)"
                for u in gone) + ".", ""]
    return lines


def render_markdown(df: pd.DataFrame, attacks: pd.DataFrame, plots: list[str],
                    plants: dict[str, str] | None = None, compared: list[str] | None = None) -> str:
    """The leaderboard as Markdown (the columns people read; the CSV has all of them); ``plants``:
    the rows that carry a planted defect (they claim nothing; the report says which were caught);
    ``compared``: the comparisons section (:func:`comparison_lines`), after the table."""
    suite = df["suite"].iloc[0]
    joined = lambda col: "; ".join(sorted(set(";".join(df[col].dropna().astype(str)).split(";")) - {""}))  # noqa: E731
    lines = [f"# Leaderboard: `{suite}`", "",
             f"Generated by `bench summarize` from the run folders (do not edit by hand). All columns: "
             f"[`leaderboard.csv`](leaderboard.csv), schema version {schema.SCHEMA_VERSION}, documented in "
             f"[results/README.md](../README.md). Arrows: which direction is better.", "",
             f"- scale: {joined('scale')}; seeds: {joined('seeds')}",
             f"- device: {joined('device')}",
             f"- git: {joined('git_sha')}; torch {joined('torch')}, opacus {joined('opacus')}, "
             f"flwr {joined('flwr')}, diffusers {joined('diffusers')}",
             f"- FID: {joined('fid_impl')}, n = {joined('fid_n_samples')} generated vs as many real test images",
             ""]
    lines += private_lines(df)
    plants = plants or {}
    if plants:
        lines += ["## Planted defects (auditing the audit)", "",
                  "These rows run a defect the accountant cannot see (`plant`, privacy/plants.py) while "
                  "printing their plan's epsilon: they claim nothing as a result. A caught plant is a failed "
                  "audit, as it must be.", "", *[f"- {ln}" for ln in planted_lines(df, plants)], ""]
    failed = df[[not pd.isna(x) and bool(x) and x_s not in plants for x, x_s in zip(df["audit_failed"], df["scenario"])]]
    if len(failed):
        lines += ["**FAILED PRIVACY AUDIT**: the empirical lower bound on epsilon exceeds the claimed epsilon in "
                  + ", ".join(f"`{r.scenario}` (claimed {_fmt(r.epsilon)}, lower bound {_fmt(r.epsilon_empirical_lb)})"
                              for r in failed.itertuples()) + ".", ""]
    cols = [c for c in schema.SHOWN  # the schema's shown columns; attack columns only where some row has them
            if c.report.always or df[c.report.when or c.name].notna().any()]
    header = [c.report.header for c in cols]
    rows = [[_cell(r, c) for c in cols] for r in df.itertuples()]
    if not df["mia_auc"].notna().any():
        lines += ["No attacks ran in this suite: the attack columns are empty and left out below.", ""]
    lines += [_table(header, rows), ""]
    lines += compared or []
    if len(attacks):
        lines += ["## Membership-inference attacks", "",
                  "One row per scenario and attack ([`attacks.csv`](attacks.csv)), mean over seeds.", "",
                  _table(["scenario", "epsilon", "attack", "AUC ↓", "TPR@1%FPR ↓", "TPR@0.1%FPR ↓", "epsilon lb",
                          "members / non-members", "seeds"],
                         [[f"`{a.scenario}`", _fmt(a.epsilon), a.attack, _fmt(a.auc, ".3f", a.auc_std),
                           _fmt(a.tpr_at_1pct_fpr, ".3f"), _fmt(a.tpr_at_0_1pct_fpr, ".3f"), _fmt(a.epsilon_lb),
                           f"{_fmt(a.n_members, 'g')} / {_fmt(a.n_nonmembers, 'g')}", str(a.n_seeds)]
                          for a in attacks.itertuples()]), ""]
    captions = {"frontier.png": "Utility vs privacy", "attack_vs_epsilon.png": "Membership inference vs epsilon",
                "roc.png": "ROC of the best attack per scenario (log-log)", "samples.png": "Samples"}
    for p in plots:
        if p in captions:
            lines += [f"## {captions[p]}", "", f"![{captions[p]}]({p})", ""]
    for folder, caption in (("roc/", "Every attack's ROC per scenario"),
                            ("inversion/", "Gradient inversion of client 0's update per scenario (true images "
                                           "above what each attacker recovered, lowest seed)")):
        if any(p.startswith(folder) for p in plots):
            lines += [f"{caption}: " + ", ".join(f"[{Path(p).stem}]({p})" for p in plots if p.startswith(folder)), ""]
    return "\n".join(lines)


def public_runs(df: pd.DataFrame, runs: dict) -> dict:
    """The run folders of the rows whose dataset is public (:func:`benchmark.data.is_public`)."""
    from benchmark.data import is_public

    public = {(r.scenario, r.scenario_hash) for r in df.itertuples() if is_public(str(r.dataset))}
    return {k: v for k, v in runs.items() if k in public}


# Columns a private dataset's rows compute from its images without any DP (the FID floor: real
# training images; the attacks: scores of members and held-out images): the report marks them.
PRIVATE_WITHOUT_DP = ("fid_floor", "mia_auc", "mia_tpr_at_1pct_fpr", "mia_tpr_at_0_1pct_fpr", "inversion_psnr",
                      "inversion_ssim", "epsilon_empirical_lb", "epsilon_estimate")


def private_lines(df: pd.DataFrame) -> list[str]:
    """What the report says of rows on private data (none: nothing)."""
    from benchmark.data import is_public

    private = sorted({str(d) for d in df["dataset"] if not is_public(str(d))})
    if not private:
        return []
    return ["## Private data", "",
            f"Rows on {', '.join(f'`{d}`' for d in private)} trained on private images. Nothing here shows one: "
            "no inversion figure is published for them (it shows the victims' true images, and a good "
            "reconstruction is one); the sample grids are generated images only (a model trained without "
            "DP can reproduce its training images: look before publishing a no-DP row's grid). Computed "
            "from the private images without DP, whatever the row's own DP: "
            + ", ".join(f"`{c}`" for c in PRIVATE_WITHOUT_DP) + ".", ""]


def write_report(res, out_dir: Path) -> list[Path]:
    """README.md and the plots of one suite (a :class:`benchmark.leaderboard.SuiteResults`)."""
    out_dir = Path(out_dir)
    df = res.leaderboard
    written = [p for p in (plot_frontier(df, out_dir / "frontier.png"),
                           plot_attack_vs_epsilon(df, out_dir / "attack_vs_epsilon.png")) if p]
    written += plot_rocs(df, res.runs, out_dir)
    grid = plot_samples(df, res.runs, out_dir / "samples.png")
    written += [grid] if grid else []
    # Where inversion ran, and only on public data: an inversion figure shows the victims' true
    # images, and a good reconstruction is one (issue 27: a private dataset's images never leave).
    written += publish_run_files(public_runs(df, res.runs), out_dir / "inversion", "inversion.png")
    suite = str(df["suite"].iloc[0])
    md = render_markdown(df, res.attacks, [p.relative_to(out_dir).as_posix() for p in written],
                         plants=planted_rows(res.runs),
                         compared=comparison_lines(*measure(suite, df, res.runs), suite))
    write_atomic(out_dir / "README.md", md)
    # A plot these runs no longer give (no attacks now, a scenario gone) must not outlive them.
    owned = [out_dir / n for n in ("frontier.png", "attack_vs_epsilon.png", "roc.png", "samples.png")]
    for stale in set(owned + list((out_dir / "roc").glob("*.png"))) - set(written):
        stale.unlink(missing_ok=True)
    if (out_dir / "roc").is_dir() and not any((out_dir / "roc").iterdir()):
        (out_dir / "roc").rmdir()
    return [*written, out_dir / "README.md"]


# The columns ``bench run`` shows in the terminal at the end (the rest is in the CSV and README).
SUMMARY_COLUMNS = ("scenario", "dp_mode", "epsilon", "fid", "kid", "downstream_acc", "mia_auc",
                   "epsilon_empirical_lb", "audit")


def audit_cell(row) -> str:
    """A row's audit in a word: ``audit_verdict`` where the leaderboard has it, else from
    ``audit_failed`` (FAILED / passed; empty where nothing is claimed)."""
    verdict = row.get("audit_verdict")
    if verdict is not None and not pd.isna(verdict) and str(verdict).strip():
        return str(verdict).strip()
    failed = row.get("audit_failed")
    if failed is None or pd.isna(failed) or str(failed).strip() == "":
        return ""
    return "FAILED" if str(failed).strip().lower() in ("true", "1") else "passed"


def terminal_summary(leaderboard_csv: Path, runs_dir: Path | None = None) -> str:
    """What ``bench run`` prints last: the key columns of a suite's leaderboard as a small table,
    the audits that failed or were inconclusive by name, and where the files are."""
    path = Path(leaderboard_csv)
    df = pd.read_csv(path, keep_default_na=True)
    out_dir = path.parent
    rows = []
    for _, r in df.iterrows():
        cells = []
        for col in SUMMARY_COLUMNS:
            if col == "audit":
                cells.append(audit_cell(r))
            elif col in ("scenario", "dp_mode"):
                cells.append(str(r.get(col, "")))
            else:
                cells.append(_fmt(r.get(col), ".4g" if col == "epsilon" else ".3g"))
        rows.append(cells)
    header = list(SUMMARY_COLUMNS)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    suite = str(df["suite"].iloc[0]) if len(df) and "suite" in df else out_dir.name
    lines = [f"== {suite}: {len(df)} scenario(s)", fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)]
    audits = {str(r["scenario"]): audit_cell(r) for _, r in df.iterrows()}
    failed = [s for s, a in audits.items() if a.upper().startswith("FAIL")]
    unsure = [s for s, a in audits.items() if "inconclusive" in a.lower()]
    checked = [s for s, a in audits.items() if a]
    if failed:
        lines.append(f"audit FAILED ({len(failed)}): {', '.join(failed)}")
    if unsure:
        lines.append(f"audit inconclusive ({len(unsure)}): {', '.join(unsure)}")
    if runs_dir is not None:
        runs = {(p.parent.parent.name.rsplit("-", 1)[0], ""): [p.parent]   # <scenario>-<hash>/seed-k
                for p in sorted(Path(runs_dir).glob(f"{suite}/*/seed-*/scenario.json"))}
        for ln in planted_lines(df, planted_rows(runs)):
            lines.append(f"planted {ln.replace('**', '').replace('`', '')}")
    if not failed:
        lines.append(f"audit: none failed ({len(checked)} DP row(s) audited"
                     + (f", {len(unsure)} of them inconclusive)" if unsure else ")") if checked else
                     "audit: no DP row (nothing claimed, nothing audited)")
    plots = sorted(p.name for p in out_dir.glob("*.png"))
    lines += [f"runs:        {runs_dir}" if runs_dir is not None else None,
              f"leaderboard: {path}",
              f"report:      {out_dir / 'README.md'}" if (out_dir / "README.md").exists() else None,
              f"plots:       {out_dir}/{{{','.join(plots)}}}" if plots else None]
    return "\n".join(ln for ln in lines if ln is not None)
