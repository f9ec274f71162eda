"""The comparisons a suite's report states in words, declared once, measured over seeds.

Each suite with comparisons registers a function that declares them (:func:`register_comparisons`):
row A against row B (scenario names) on some leaderboard columns. :func:`measure` reads every
seed's value of those columns from the run folders the leaderboard is built from (metrics.json)
and gives A - B with its 95 % interval (:func:`benchmark.intervals.difference`: paired by seed,
else Welch); the report (:mod:`benchmark.report`) prints one line per comparison and column. Which
way is better is the column's (:mod:`benchmark.schema`). A suite without declared comparisons gets
none; a declared row that the suite does not define at a scale is left out, one it defines but
that has no runs is named as not run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark import schema
from benchmark.intervals import Difference, difference

# The columns a comparison reads unless it names its own: utility, and the best membership attack
# (every seed's own value is in its metrics.json).
COLUMNS = ("fid", "downstream_acc", "mia_auc")


class ComparisonError(ValueError):
    """A comparison cannot be declared or measured (one-line message)."""


def _column(name: str) -> schema.Column:
    col = next((c for c in schema.LEADERBOARD if c.name == name), None)
    if col is None or col.source != "metric" or col.dtype != "float":
        raise ComparisonError(f"column {name!r} is not a per-seed float metric of the leaderboard "
                              "(benchmark/schema.py)")
    return col


def lower_is_better(name: str) -> bool:
    """The column's better direction: its regression gate's, else its documented ``better``."""
    col = _column(name)
    if col.gate is not None:
        return col.gate.lower_is_better
    for word, lower in (("lower", True), ("higher", False)):
        if col.better.startswith(word):
            return lower
    raise ComparisonError(f"column {name!r} declares no better direction (benchmark/schema.py `better`)")


@dataclass(frozen=True)
class Comparison:
    """Row ``a`` against row ``b`` (scenario names of one suite): ``what`` says it in words."""

    a: str
    b: str
    what: str
    columns: tuple[str, ...] = COLUMNS

    def __post_init__(self):
        if self.a == self.b:
            raise ComparisonError(f"comparison {self.what!r} compares {self.a!r} with itself")
        for c in self.columns:
            lower_is_better(c)  # a known per-seed column with a direction, or one line


# The registry: suite name -> the function that declares its comparisons.
ComparisonsFn = Callable[[], tuple[Comparison, ...]]
COMPARISONS: dict[str, ComparisonsFn] = {}


def register_comparisons(suite: str) -> Callable[[ComparisonsFn], ComparisonsFn]:
    def deco(fn: ComparisonsFn) -> ComparisonsFn:
        if suite in COMPARISONS:
            raise ValueError(f"comparisons of suite {suite!r} registered twice")
        COMPARISONS[suite] = fn
        return fn

    return deco


def comparisons(suite: str, scenarios) -> tuple[Comparison, ...]:
    """The declared comparisons of ``suite`` whose two rows are both among ``scenarios`` (names)."""
    fn = COMPARISONS.get(suite)
    names = set(scenarios)
    return tuple(c for c in fn() if c.a in names and c.b in names) if fn else ()


# The declarations ---------------------------------------------------------------------------------
CROSS_DEVICE_MODES = {"ftrl": "DP-FTRL", "sampled": "sampled DP-FedAvg", "fixed": "fixed-count DP-FedAvg"}


@register_comparisons("cross-device")
def _cross_device() -> tuple[Comparison, ...]:
    """Mode against mode at each epsilon; within each mode epsilon against the next; adaptive
    clipping against the fixed clip; the rows the README says beat (or not) the public checkpoint."""
    row = "cross-device-iid-{}-eps{}".format
    names, eps = CROSS_DEVICE_MODES, ("10", "4", "1")
    out = [Comparison(row(a, e), row(b, e), f"{names[a]} vs {names[b]}, epsilon {e}")
           for e in eps for a, b in (("ftrl", "sampled"), ("sampled", "fixed"), ("ftrl", "fixed"))]
    out += [Comparison(row(m, hi), row(m, lo), f"{names[m]}: epsilon {hi} vs {lo}")
            for m in names for hi, lo in zip(eps, eps[1:])]
    out += [Comparison(row("sampled-adaptive", "10"), row("sampled", "10"),
                       "adaptive vs fixed clip, sampled DP-FedAvg, epsilon 10"),
            Comparison("cross-device-iid-nodp", "cross-device-public-only", "no DP vs the public checkpoint")]
    out += [Comparison(row(m, e), "cross-device-public-only", f"{names[m]}, epsilon {e}, vs the public checkpoint",
                       ("fid", "downstream_acc"))
            for m, e in (("sampled", "10"), ("sampled", "4"), ("fixed", "10"), ("ftrl", "10"))]
    return tuple(out)


@register_comparisons("privacy")
def _privacy() -> tuple[Comparison, ...]:
    """The order the README states (FID no DP < epsilon 10 < 4 < 1; no DP's accuracy above every DP
    row's), every DP row against the public checkpoint (utility, and the membership AUC: the
    checkpoint never saw a member, so it is the same seed's chance level of the attack on that
    seed's member / held-out split), and what the private data add without DP."""
    row = "privacy-iid-local-eps{}".format
    out = [Comparison("privacy-iid-nodp", row(e), f"no DP vs local DP-SGD at epsilon {e}") for e in ("10", "4", "1")]
    out += [Comparison(row(hi), row(lo), f"local DP-SGD: epsilon {hi} vs {lo}") for hi, lo in (("10", "4"), ("4", "1"))]
    out += [Comparison(row(e), "privacy-public-only", f"local DP-SGD at epsilon {e} vs the public checkpoint",
                       ("fid", "downstream_acc", "mia_auc")) for e in ("10", "4", "1")]
    out.append(Comparison("privacy-iid-nodp", "privacy-public-only", "no DP vs the public checkpoint"))
    return tuple(out)


@register_comparisons("privacy-controls")
def _privacy_controls() -> tuple[Comparison, ...]:
    return (Comparison("privacy-control-nodp-adam-dp-budget", "privacy-control-local-eps10-adam",
                       "Adam at the DP budget: no DP vs DP-SGD at epsilon 10"),
            Comparison("privacy-control-nodp-adam-dp-budget", "privacy-control-nodp-dp-recipe",
                       "no DP at the DP budget: Adam vs the DP rows' SGD"))


@register_comparisons("seed-paper-embedded")
def _seed_paper_embedded() -> tuple[Comparison, ...]:
    """The seed paper's trend: FID against the number of clients N, at each label skew."""
    row = "paper-embedded-dir{}-n{}".format
    return tuple(Comparison(row(beta, lo), row(beta, hi), f"Dirichlet {beta}: N = {lo} vs {hi}",
                            ("fid", "downstream_acc"))
                 for beta in ("0.1", "0.5", "5") for lo, hi in (("10", "30"), ("30", "50")))


# Measuring -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    """One comparison on one column at one scale."""

    comparison: Comparison
    column: str
    scale: str
    difference: Difference

    @property
    def verdict(self) -> str:
        """``significant: A better`` / ``significant: B better`` / ``not significant``, or why there
        is no interval."""
        d = self.difference
        if d.lo is None:
            return d.no_interval
        if not d.significant:
            return "not significant"
        return f"significant: {'A' if (d.diff < 0) == lower_is_better(self.column) else 'B'} better"


@dataclass(frozen=True)
class Unmeasured:
    """A declared comparison whose rows the suite defines at this scale but these runs lack."""

    comparison: Comparison
    scale: str
    missing: tuple[str, ...]


def _defined(suite: str, scale: str) -> dict[str, str] | None:
    """scenario name -> hash of ``suite`` at ``scale`` as registered now (None: not a registered suite)."""
    from benchmark.scenarios import ScenarioError
    from benchmark.suites import get_suite, suite_names

    if suite not in suite_names():
        return None
    try:
        return {s.name: s.hash for s in get_suite(suite, scale)}
    except ScenarioError:  # a scale this checkout does not know
        return None


def _row_runs(rows: list[tuple[str, str]], runs: dict, defined: dict[str, str] | None) -> dict[str, list[Path]]:
    """scenario name -> its run folders at one scale: the one definition (hash) these runs hold, or
    where they hold several, the registered one (a name with several and none registered: left out)."""
    hashes: dict[str, list[str]] = {}
    for name, h in rows:
        hashes.setdefault(name, []).append(h)
    out = {}
    for name, hs in hashes.items():
        pick = hs[0] if len(set(hs)) == 1 else (defined or {}).get(name)
        if pick in hs:
            out[name] = list(runs.get((name, pick), []))
    return out


def _seed_values(paths: list[Path], key: str, cache: dict) -> dict[int, float]:
    """seed -> the value of metrics.json ``key`` of each run (seeds without it left out)."""
    out = {}
    for p in paths:
        if p not in cache:
            try:
                seed = int(json.loads((Path(p) / "scenario.json").read_text())["seed"])
                cache[p] = (seed, json.loads((Path(p) / "metrics.json").read_text()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ComparisonError(f"{p}: unreadable for the comparisons ({e})") from None
        seed, metrics = cache[p]
        v = metrics.get(key)
        if v is not None:
            out[seed] = v
    return out


def measure(suite: str, board, runs: dict) -> tuple[list[Measured], list[Unmeasured]]:
    """Every declared comparison of ``suite`` on its leaderboard ``board`` (a DataFrame with
    ``scenario``, ``scenario_hash``, ``scale``), from the run folders ``runs`` ((scenario, hash) ->
    paths by seed, as :class:`benchmark.leaderboard.SuiteResults` holds them), scale by scale."""
    if suite not in COMPARISONS:
        return [], []
    measured, unmeasured, cache = [], [], {}
    for scale in sorted({str(s) for s in board["scale"]}):
        rows = [(str(r.scenario), str(r.scenario_hash)) for r in board.itertuples() if str(r.scale) == scale]
        defined = _defined(suite, scale)
        found = _row_runs(rows, runs, defined)
        for c in comparisons(suite, set(found) | set(defined or ())):
            missing = tuple(n for n in (c.a, c.b) if not found.get(n))
            if missing:
                unmeasured.append(Unmeasured(c, scale, missing))
                continue
            for col in c.columns:
                key = _column(col).source_key
                a, b = _seed_values(found[c.a], key, cache), _seed_values(found[c.b], key, cache)
                if a and b:  # a column neither row measured (no attacks, not class-conditional): no line
                    measured.append(Measured(c, col, scale, difference(a, b)))
    return measured, unmeasured
