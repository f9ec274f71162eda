"""``bench compare BASE.csv NEW.csv``: the regression gate between two leaderboards.

Rows are matched by (suite, scenario, scale). For every matched row:

* a changed ``scenario_hash`` means the scenario's definition changed: nothing in the row is
  compared and the row fails (rebuild the baseline);
* privacy settings must not move: ``epsilon``, ``noise_multiplier``, ``sample_rate`` and
  ``max_grad_norm`` within a relative 1e-4, ``accountant`` exactly (a changed epsilon at the same
  settings fails, in either direction);
* ``fid_impl`` and ``fid_n_samples`` must match, or FID and KID are not comparable (fails);
* every gated metric (:data:`GATED`: the columns of :mod:`benchmark.schema` that declare a gate)
  is compared in its "worse" direction against a tolerance band

      band = max(sigmas * sqrt(std_base^2 / n_base + std_new^2 / n_new), margin)

  (the standard error of the difference of the two means, from the seeds' spread, with a set
  margin as the floor). Where one side has a single seed and the other a spread, that spread
  stands for both (the same scenario definition: the same seed-to-seed noise), so a one-seed run
  (e.g. CI's ``--seeds 0``) is gated against a published multi-seed row; only the margin where
  neither side has a spread. A change beyond
  the band in the worse direction fails; beyond it in the better direction is reported as better;
* a DP row whose noise no run replays (:func:`secret_noise`: central DP's noise comes from
  Flower's wrapper, numpy's unseeded global RNG, and DP noise is secret by design) differs between
  two runs of the same commit by that noise alone, and two seeds do not estimate that spread (the
  CPU privacy suite's epsilon-1 row: FID 110.7-188.5 over four fresh-clone seeds, two of them
  within 8 of each other; its downstream accuracy 0.145-0.599 over twelve draws,
  ``tests/data/privacy-eps1-draws.csv``). So its band is never less than the gate's ``noise_floor``
  (declared in :mod:`benchmark.schema`), spread or not, sized so that a chance-level draw of the
  same commit passes (the attack columns: the null of a best-of-three attack; results/README.md):
  such a row is gated on its settings, definition, audit and missing values, and on its metrics
  only beyond that floor. Many more seeds give it a real band;
* a metric present in BASE but empty in NEW fails (it stopped being measured);
* ``audit_failed`` true in NEW fails, whatever BASE says;
* a BASE row missing from NEW fails; a NEW row missing from BASE is reported, not failed
  (unless its audit failed).

Like asv's ``--factor`` together with its statistical test, a change must be both outside the
seeds' noise and larger than the margin to count.

What each gate can catch (its power, printed after the findings; :func:`gate_power`): the smallest
true regression it flags with probability 95 %, ``band + z_0.95 * SE`` under the normal model the
band uses (:func:`detectable`), where SE is the seeds' standard error of the difference and, on a
DP row, never less than that of the secret noise its floor stands for (:func:`secret_sd`: the floor
read as the 3-sigma band of the one-seed-against-two comparison it was sized for). A DP row's band
is its floor whatever the seeds, so it catches nothing below its floor at any seed count (1.45-1.9
times the floor at one or two seeds a side; results/README.md, "What the gate can catch", generated
by :func:`power_doc`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING

from benchmark import schema
from benchmark.schema import Gate

if TYPE_CHECKING:  # pandas only when comparing: `bench --help` stays fast
    import pandas as pd

KEY = ("suite", "scenario", "scale")


# Metric -> direction and default margin (see results/README.md, "Regression gate"), from the
# columns of benchmark.schema that declare a gate.
GATED: dict[str, Gate] = schema.GATED
SETTINGS_NUMERIC = ("epsilon", "noise_multiplier", "sample_rate", "max_grad_norm")
SETTINGS_EXACT = ("accountant",)
SETTINGS_RTOL = 1e-4
FID_METRICS = ("fid", "kid")

FAILING = ("WORSE", "CHANGED", "MISSING", "AUDIT FAILED")


def secret_noise(dp_mode) -> bool:
    """Whether two runs of the same commit draw different noise for a row of this ``dp_mode`` (the
    gates' ``noise_floor`` applies): every private mechanism of :mod:`privacy.mechanisms`, whose noise
    is secret by design (drawn from OS entropy, :mod:`privacy.noise`)."""
    from privacy.mechanisms import get_mechanism  # torch-free
    from privacy.modes import ModeError

    try:
        return get_mechanism(str(dp_mode)).private
    except ModeError:
        return False


class CompareError(ValueError):
    """The two leaderboards cannot be compared (one-line message)."""


@dataclass(frozen=True)
class Finding:
    scenario: str
    check: str
    base: str
    new: str
    change: str
    band: str
    status: str  # ok, better, new, WORSE, CHANGED, MISSING, AUDIT FAILED

    @property
    def failing(self) -> bool:
        return self.status in FAILING


def _na(x) -> bool:
    import pandas as pd

    return x is None or bool(pd.isna(x))


def _num(x) -> str:
    return "" if _na(x) else f"{float(x):.6g}"


def parse_margin(text: str) -> tuple[str, float, bool]:
    """``fid=5%`` (relative to the baseline value) or ``mia_auc=0.01`` (absolute)."""
    name, sep, value = text.partition("=")
    if not sep or name not in GATED:
        raise CompareError(f"--margin {text!r}: expected METRIC=VALUE with METRIC one of {', '.join(GATED)}")
    rel = value.endswith("%")
    try:
        v = float(value[:-1]) / 100 if rel else float(value)
    except ValueError:
        raise CompareError(f"--margin {text!r}: {value!r} is not a number (e.g. 0.02 or 5%)") from None
    if not (v >= 0 and math.isfinite(v)):
        raise CompareError(f"--margin {text!r}: the margin must be >= 0")
    return name, v, rel


@dataclass(frozen=True)
class _Parts:
    """What a gated comparison's band is made of, in the metric's unit; the noise of each side's
    mean as variances (base, new): from the seeds' spread, and on a DP row from the secret noise its
    floor stands for (:func:`secret_sd`)."""

    margin: float
    floor: float                              # 0 where no noise floor applies
    seeds_var: tuple[float, float] | None      # None: no spread on either side
    secret_var: tuple[float, float] | None     # None: no noise floor applies

    @property
    def se(self) -> float | None:
        """The standard error of the difference of the means, from the seeds' spread."""
        return None if self.seeds_var is None else math.sqrt(sum(self.seeds_var))

    def band(self, sigmas: float) -> float:
        return max(sigmas * (self.se or 0.0), self.margin, self.floor)


def _parts(gate: Gate, b: pd.Series, n: pd.Series, metric: str) -> _Parts:
    scale = abs(float(b[metric])) if gate.relative else 1.0
    margin = gate.margin * scale
    sb, sn = b.get(f"{metric}_std"), n.get(f"{metric}_std")
    if _na(sb) != _na(sn):  # one side has a spread (>= 2 seeds): the same scenario, the same noise
        sb = sn = sb if _na(sn) else sn
    nb, nn = int(b["n_seeds"]), int(n["n_seeds"])
    # A row whose noise is secret by design: two seeds cannot estimate its spread (four fresh-clone
    # seeds of the CPU privacy suite's epsilon-1 row spanned FID 110.7-188.5), so its band is never
    # less than the gate's noise floor, spread or not.
    secret = gate.noise_floor is not None and secret_noise(n.get("dp_mode", ""))
    floor = gate.noise_floor * scale if secret else 0.0
    sd = secret_sd(gate) * scale if secret else 0.0
    return _Parts(margin, floor,
                  None if _na(sb) or _na(sn) else (float(sb) ** 2 / nb, float(sn) ** 2 / nn),
                  (sd ** 2 / nb, sd ** 2 / nn) if secret else None)


def _band(gate: Gate, b: pd.Series, n: pd.Series, metric: str, sigmas: float) -> float:
    return _parts(gate, b, n, metric).band(sigmas)


def compare_rows(b: pd.Series, n: pd.Series, *, sigmas: float, gates: dict[str, Gate]) -> list[Finding]:
    name = b["scenario"]
    if b["scenario_hash"] != n["scenario_hash"]:
        return [Finding(name, "scenario_hash", b["scenario_hash"], n["scenario_hash"], "definition changed", "",
                        "CHANGED")]
    out = []
    for col in SETTINGS_NUMERIC:
        x, y = b[col], n[col]
        if _na(x) and _na(y):
            continue
        same = not _na(x) and not _na(y) and math.isclose(float(x), float(y), rel_tol=SETTINGS_RTOL, abs_tol=1e-12)
        change = f"{float(y) - float(x):+.3g}" if not (_na(x) or _na(y)) else ""
        out.append(Finding(name, col, _num(x), _num(y), change, f"rel {SETTINGS_RTOL:g}", "ok" if same else "CHANGED"))
    for col in SETTINGS_EXACT + ("fid_impl", "fid_n_samples"):
        x, y = ("" if _na(b[col]) else str(b[col])), ("" if _na(n[col]) else str(n[col]))
        if x != y:
            out.append(Finding(name, col, x, y, "", "equal", "CHANGED"))
    fid_comparable = all(str(b[c]) == str(n[c]) for c in ("fid_impl", "fid_n_samples"))
    for metric, gate in gates.items():
        x, y = b[metric], n[metric]
        if _na(x) and _na(y):
            continue
        if _na(y):
            out.append(Finding(name, metric, _num(x), "", "", "", "MISSING"))
            continue
        if _na(x):
            out.append(Finding(name, metric, "", _num(y), "", "", "new"))
            continue
        if metric in FID_METRICS and not fid_comparable:
            continue  # reported above as a changed fid_impl / fid_n_samples
        band = _band(gate, b, n, metric, sigmas)
        worse = (float(y) - float(x)) * (1 if gate.lower_is_better else -1)
        status = "WORSE" if worse > band else "better" if -worse > band else "ok"
        arrow = "↓" if gate.lower_is_better else "↑"
        out.append(Finding(name, f"{metric} {arrow}", _num(x), _num(y), f"{float(y) - float(x):+.3g}",
                           f"±{band:.3g}", status))
    return out + _audit(n, b)


def _audit(n: pd.Series, b: pd.Series | None) -> list[Finding]:
    """A failed audit in NEW fails the gate, whatever BASE says (and also for a new row)."""
    if _na(n["audit_failed"]) or not bool(n["audit_failed"]):
        return []
    was = "" if b is None or _na(b["audit_failed"]) else str(bool(b["audit_failed"]))
    return [Finding(n["scenario"], "audit_failed", was, "True", "", "must be False", "AUDIT FAILED")]


def compare(base: pd.DataFrame, new: pd.DataFrame, *, sigmas: float = 3.0,
            margins: dict[str, tuple[float, bool]] | None = None) -> list[Finding]:
    """Every check of every scenario of ``base`` against ``new`` (leaderboards as read by
    :func:`benchmark.leaderboard.read_leaderboard`)."""
    gates, b_idx, n_idx = _prepare(base, new, sigmas, margins)
    out = []
    for key in sorted(set(b_idx) | set(n_idx)):
        if key not in n_idx:
            out.append(Finding(key[1], "row", "present", "", "", "", "MISSING"))
        elif key not in b_idx:
            out.append(Finding(key[1], "row", "", "present", "", "", "new"))
            out.extend(_audit(n_idx[key], None))
        else:
            out.extend(compare_rows(b_idx[key], n_idx[key], sigmas=sigmas, gates=gates))
    return out


def _prepare(base: pd.DataFrame, new: pd.DataFrame, sigmas: float, margins) -> tuple[dict, dict, dict]:
    """The gates (with ``margins``' overrides) and both boards' rows by KEY; CompareError where the
    boards cannot be compared."""
    if not (sigmas >= 0 and math.isfinite(sigmas)):
        raise CompareError(f"--sigmas must be >= 0, got {sigmas}")
    gates = dict(GATED)
    for metric, (value, rel) in (margins or {}).items():
        g = GATED[metric]  # the noise floor is in the margin's unit: kept only where that unit is unchanged
        gates[metric] = dataclasses.replace(g, margin=value, relative=rel,
                                            noise_floor=g.noise_floor if rel == g.relative else None)
    for label, df in (("BASE", base), ("NEW", new)):
        dup = df[df.duplicated(list(KEY), keep=False)]
        if len(dup):
            raise CompareError(f"{label} has more than one row for scenario {dup['scenario'].iloc[0]!r} "
                               f"(scale {dup['scale'].iloc[0]})")
    b_idx = {tuple(r[k] for k in KEY): r for _, r in base.iterrows()}
    n_idx = {tuple(r[k] for k in KEY): r for _, r in new.iterrows()}
    if b_idx and not set(b_idx) & set(n_idx):
        what = lambda d: "; ".join(sorted({f"{k[0]} at scale {k[2]}" for k in d}))  # noqa: E731
        raise CompareError(f"no scenario in common (BASE: {what(b_idx)}; NEW: {what(n_idx) or 'empty'})")
    return gates, b_idx, n_idx


def compare_files(base: Path, new: Path, **kw) -> list[Finding]:
    from benchmark.leaderboard import read_leaderboard

    return compare(read_leaderboard(base), read_leaderboard(new), **kw)


HEADER = ("scenario", "check", "base", "new", "change", "band", "status")


def format_table(findings: list[Finding], markdown: bool = False) -> str:
    rows = [[f.scenario, f.check, f.base, f.new, f.change, f.band, f.status] for f in findings]
    if markdown:
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(esc(c) if c not in FAILING else f"**{c}**" for c in r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADER)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(HEADER), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def summary(findings: list[Finding]) -> str:
    bad = [f for f in findings if f.failing]
    if not bad:
        n = len({f.scenario for f in findings})
        return f"no regression in {n} scenario(s) ({len(findings)} checks)"
    return f"{len(bad)} regression(s): " + "; ".join(f"{f.scenario} {f.check.split()[0]} {f.status}" for f in bad)


# What each gate can catch: its power --------------------------------------------------------------
LEVEL = 0.95
DEFAULT_SIGMAS = 3.0
# The comparison the noise floors were sized for: a one-seed fresh run (.ci/run's --seeds 0) against
# the published two-seed board (seeds of BASE, NEW).
FLOOR_SEEDS = (2, 1)


def secret_sd(gate: Gate) -> float | None:
    """The per-run std of a DP row's metric that ``gate``'s noise floor stands for, in the floor's
    unit (a fraction of the base value where the gate is relative): the floor read as the
    ``DEFAULT_SIGMAS`` band of the comparison it was sized for (:data:`FLOOR_SEEDS`), i.e.
    ``floor / (3 * sqrt(1/2 + 1))``. None without a floor. Near the measured secret noise where it
    was measured: 20 % of FID and 0.136 of accuracy against twelve epsilon-1 draws' 13 % and 0.13."""
    if gate.noise_floor is None:
        return None
    nb, nn = FLOOR_SEEDS
    return gate.noise_floor / (DEFAULT_SIGMAS * math.sqrt(1 / nb + 1 / nn))


def detectable(band: float, se: float | None, level: float = LEVEL) -> float | None:
    """The smallest true shift in the worse direction that a gate of this ``band`` flags with
    probability ``level``, where the difference of the means it sees is normal around the shift
    with standard error ``se`` (the normal model the band itself uses): it flags ``D > band`` with
    ``D ~ N(shift, se^2)``, probability ``1 - Phi((band - shift) / se)``, which is ``level`` at
    ``shift = band + z_level * se``. None without an ``se`` (no spread on either side: nothing
    says how noisy the difference is)."""
    if se is None:
        return None
    return band + NormalDist().inv_cdf(level) * se


@dataclass(frozen=True)
class Power:
    """What one gated comparison can catch: ``shift``, in the metric's unit (> 0, in the worse
    direction), is the smallest true regression it flags with probability :data:`LEVEL`."""

    scenario: str
    metric: str
    base: float
    band: float
    se: float | None     # the standard error of the difference the gate faces (gate_power)
    shift: float | None  # None: no spread on either side, power unknown
    dp: bool             # a DP row (secret noise)
    reachable: bool      # base moved by shift is a value the metric can take (its column's bounds)

    @property
    def relative(self) -> float | None:
        return None if self.shift is None or self.base == 0 else self.shift / abs(self.base)


def _column(metric: str) -> schema.Column | None:
    return next((c for c in schema.LEADERBOARD if c.name == metric), None)


def _unit(metric: str) -> str:
    c = _column(metric)
    return c.unit if c else ""


def gate_power(gate: Gate, b: pd.Series, n: pd.Series, metric: str, sigmas: float = DEFAULT_SIGMAS,
               level: float = LEVEL) -> Power:
    """The power of the gate on ``metric`` between rows ``b`` and ``n``: :func:`detectable` of its
    band and the noise of the difference it tests. Each side's mean has the seeds' noise; on a DP
    row never less than the secret noise its floor stands for (:func:`secret_sd`, over each side's
    seeds), as two seeds do not estimate that noise (the floor's reason). Where the band is a share
    k of the base value (a relative margin or floor), it moves with the base's own mean: the gate
    tests ``new - (1 ± k) base``, whose standard error counts the base's noise (1 ± k) times."""
    p = _parts(gate, b, n, metric)
    band = p.band(sigmas)
    sides = [v for v in (p.seeds_var, p.secret_var) if v is not None]
    se = None
    if sides:
        var_b, var_n = max(v[0] for v in sides), max(v[1] for v in sides)
        base = abs(float(b[metric]))
        shared = max(p.margin, p.floor)  # the band's part that is a share of the base value
        k = shared / base if gate.relative and shared >= sigmas * (p.se or 0.0) and base > 0 else 0.0
        se = math.sqrt(var_n + (1 + (k if gate.lower_is_better else -k)) ** 2 * var_b)
    shift = detectable(band, se, level)
    value = float(b[metric])
    worst = None if shift is None else value + (shift if gate.lower_is_better else -shift)
    bounds = getattr(_column(metric), "bounds", None)
    reachable = worst is None or bounds is None or bounds[0] <= worst <= bounds[1]
    return Power(str(b["scenario"]), metric, value, band, se, shift, secret_noise(n.get("dp_mode", "")), reachable)


def power(base: pd.DataFrame, new: pd.DataFrame, *, sigmas: float = DEFAULT_SIGMAS,
          margins: dict[str, tuple[float, bool]] | None = None, level: float = LEVEL) -> list[Power]:
    """The power of every gated comparison :func:`compare` makes on a metric (matched rows of the
    same definition, both values present, FID and KID only where comparable)."""
    gates, b_idx, n_idx = _prepare(base, new, sigmas, margins)
    out = []
    for key in sorted(set(b_idx) & set(n_idx)):
        b, n = b_idx[key], n_idx[key]
        if b["scenario_hash"] != n["scenario_hash"]:
            continue
        fid_comparable = all(str(b[c]) == str(n[c]) for c in ("fid_impl", "fid_n_samples"))
        for metric, gate in gates.items():
            if _na(b[metric]) or _na(n[metric]) or (metric in FID_METRICS and not fid_comparable):
                continue
            out.append(gate_power(gate, b, n, metric, sigmas, level))
    return out


def rerun(base: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """``base``'s rows as a fresh run of ``seeds`` seeds would have them, for :func:`power`: the same
    values, and the same spread (the same definitions) from two seeds on, none with one."""
    new = base.copy()
    new["n_seeds"] = seeds
    if seeds < 2:
        for metric in GATED:
            new[f"{metric}_std"] = float("nan")
    return new


@dataclass(frozen=True)
class PowerLine:
    """One gated column's power over a group of rows (without DP, or DP rows)."""

    metric: str
    dp: bool
    rows: int
    unknown: int            # rows with no spread on either side (power unknown)
    median: Power | None    # the median row of the others (the lower of two), by the order of worst
    worst: Power | None     # the row needing the largest regression (an unreachable one first)


def summarize_power(powers: list[Power]) -> list[PowerLine]:
    """Per gated column, rows without DP then DP rows: the median and the worst row (ordered by the
    share of the base value where the gate is relative, else in the metric's unit; unreachable last)."""
    out = []
    for metric, gate in GATED.items():
        for dp in (False, True):
            group = [p for p in powers if p.metric == metric and p.dp == dp]
            if not group:
                continue
            size = (lambda p: (round(p.relative or 0.0, 9), p.shift)) if gate.relative else (lambda p: p.shift)  # noqa: E731
            known = sorted((p for p in group if p.shift is not None), key=lambda p: (not p.reachable, size(p)))
            out.append(PowerLine(metric, dp, len(group), len(group) - len(known),
                                 known[(len(known) - 1) // 2] if known else None, known[-1] if known else None))
    return out


def _pct(rel: float | None) -> str:
    if rel is None:
        return ""
    pct = 100 * rel
    return f" ({pct:.0f}%)" if pct >= 10 else f" ({pct:.2g}%)"


def _shift(p: Power) -> str:
    sign = "+" if GATED[p.metric].lower_is_better else "-"
    text = f"{sign}{p.shift:.3g}{_pct(p.relative)}"
    return text if p.reachable else text + " unreachable"


POWER_HEADER = ("metric", "rows", "median", "worst row")


def power_rows(lines: list[PowerLine]) -> list[list[str]]:
    rows = []
    for ln in lines:
        arrow = "↓" if GATED[ln.metric].lower_is_better else "↑"
        what = f"{'DP' if ln.dp else 'no DP'}: {ln.rows}" + (f" ({ln.unknown} no spread)" if ln.unknown else "")
        med = "unknown: no spread" if ln.median is None else _shift(ln.median)
        worst = "" if ln.worst is None else f"{_shift(ln.worst)} {ln.worst.scenario}"
        rows.append([f"{ln.metric} {arrow}", what, med, worst])
    return rows


def format_power(lines: list[PowerLine], markdown: bool = False, level: float = LEVEL) -> str:
    """The power table ``bench compare`` prints after its findings (one line per column and group)."""
    title = (f"power: each gate detects a regression of (at {level:.0%}; in the metric's unit and % of the "
             "base value):")
    rows = power_rows(lines)
    if not rows:
        return title + " nothing gated in common"
    if markdown:
        return "\n".join([title, "", "| " + " | ".join(POWER_HEADER) + " |", "|" + "---|" * len(POWER_HEADER),
                          *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(POWER_HEADER)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([title, fmt(POWER_HEADER), *(fmt(r) for r in rows)])


# The power of the published gates, for results/README.md ("Regression gate") ---------------------
# Regressions the gates should catch, in the gate's unit (a fraction of the base value where it is
# relative): a DP row's FID 50% worse (a held-out check found that it passes), and a DP row's
# accuracy falling by 0.4 (the privacy suite's epsilon-1 row, 0.51, to chance, 0.1).
TARGETS = (("fid", 0.5, "a DP row's FID 50% worse"),
           ("downstream_acc", 0.4, "a DP row's accuracy 0.4 lower (epsilon 1's 0.51 to chance)"))


def floor_power(gate: Gate, n_base: int, n_new: int, *, shrink: bool = False, sigmas: float = DEFAULT_SIGMAS,
                level: float = LEVEL) -> float:
    """The detectable regression of a DP row (in the gate's unit) with ``n_base`` and ``n_new`` seeds
    where the secret noise its floor stands for is all the noise (as :func:`gate_power`): the gate
    as it is (band: the floor, whatever the seeds) or, with ``shrink``, a band that shrinks with the
    seeds as that noise's standard error does (``max(sigmas * se, margin)``, the gate's rule for a
    row whose spread it can estimate)."""
    sd = secret_sd(gate)
    se = sd * math.sqrt(1 / n_base + 1 / n_new)
    shared = gate.margin if shrink else max(gate.margin, gate.noise_floor)  # a share of the base value
    band = max(sigmas * se, shared)
    k = shared if gate.relative and shared >= sigmas * se else 0.0
    k = k if gate.lower_is_better else -k
    return detectable(band, sd * math.sqrt(1 / n_new + (1 + k) ** 2 / n_base), level)


def seeds_needed(gate: Gate, target: float, *, n_base: int | None = None, shrink: bool = False,
                 most: int = 100) -> int | None:
    """The fewest seeds of a new run for which a DP row's detectable regression (:func:`floor_power`)
    is at most ``target``: against ``n_base`` seeds, or as many as the run's (a baseline run anew)
    where None. None where no number up to ``most`` does."""
    return next((n for n in range(1, most + 1)
                 if floor_power(gate, n_base or n, n, shrink=shrink) <= target), None)


def _gate_unit(metric: str, value: float) -> str:
    g = GATED[metric]
    sign = "+" if g.lower_is_better else "-"
    if g.relative:
        return f"{sign}{100 * value:.0f}%"
    unit = _unit(metric)
    return f"{sign}{value:.3g}" + (f" {unit}" if unit and unit != "fraction" else "")


def power_doc(base: pd.DataFrame) -> str:
    """Markdown: what ``.ci/run``'s gate (a one-seed run against ``base``, the published privacy board)
    and the GPU regression suite (two seeds against two) can catch, and the seeds :data:`TARGETS` need."""
    from benchmark.scales import SCALES
    from benchmark.suites import REGRESSION_GPU_MINUTES

    gpu_seeds = len(SCALES["gpu"].regression_sizes["seeds"])
    nb, nn = FLOOR_SEEDS
    lines = {(ln.metric, ln.dp): ln for ln in summarize_power(power(base, rerun(base, nn)))}

    def cell(ln: PowerLine | None) -> str:
        if ln is None:
            return ""
        if ln.median is None:
            return "unknown: no spread"
        return f"{_shift(ln.median)}; {_shift(ln.worst)} (`{ln.worst.scenario}`)"

    rows = []
    for metric, gate in GATED.items():
        rows.append([f"`{metric}`", cell(lines.get((metric, False))), cell(lines.get((metric, True))),
                     "" if gate.noise_floor is None else _gate_unit(metric, floor_power(gate, gpu_seeds, gpu_seeds))])
    table = "\n".join([
        "| gated metric | `.ci/run`: rows without DP, median; worst | `.ci/run`: DP rows, median; worst | "
        f"GPU regression suite: DP rows ({gpu_seeds} seeds against {gpu_seeds}), at least |",
        "|---|---|---|---|", *("| " + " | ".join(r) + " |" for r in rows)])

    def count(n: int | None) -> str:
        return "never" if n is None else str(n)

    seeds = []
    need = []
    for metric, target, words in TARGETS:
        g = GATED[metric]
        both = seeds_needed(g, target, shrink=True)
        need.append(both)
        seeds.append([words, count(seeds_needed(g, target)), count(seeds_needed(g, target, n_base=nb, shrink=True)),
                      count(both)])
    seeds_table = "\n".join([
        "| target | the gate as it is: seeds on both sides | a band that shrinks with seeds: a new run's "
        f"seeds against the published {nb} | the same: seeds on both sides (the baseline rerun too) |",
        "|---|---|---|---|", *("| " + " | ".join(r) + " |" for r in seeds)])
    most = max((n for n in need if n is not None), default=None)
    budget = ("" if most is None else
              f" {most} seeds on both sides would take the GPU regression suite about "
              f"{REGRESSION_GPU_MINUTES * most / gpu_seeds:.0f} minutes on one H100 at its estimate of "
              f"{REGRESSION_GPU_MINUTES} for {gpu_seeds} seeds"
              + (", beyond its budget: it keeps its seeds." if most > gpu_seeds else "."))
    return (table + f"\n\nThe seeds a target needs for {LEVEL:.0%} power on a DP row (the secret noise the "
            "floors stand for as all the noise; never: not up to 100 seeds):\n\n" + seeds_table + "\n\n"
            + budget.strip())


def update_power_doc(text: str, base: pd.DataFrame) -> str:
    """``text`` with the Markdown between ``<!-- compare:power -->`` and ``<!-- /compare:power -->``
    regenerated by :func:`power_doc` from ``base`` (``python scripts/schema_doc.py`` writes it to
    results/README.md from results/privacy/leaderboard.csv)."""
    import re

    pattern = re.compile(r"(<!-- compare:power -->\n)(?:.*?\n)?(<!-- /compare:power -->)", re.S)
    if not pattern.search(text):
        raise CompareError("no <!-- compare:power --> ... <!-- /compare:power --> markers")
    doc = power_doc(base)
    return pattern.sub(lambda m: m.group(1) + doc + "\n" + m.group(2), text)
