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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
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


def _band(gate: Gate, b: pd.Series, n: pd.Series, metric: str, sigmas: float) -> float:
    scale = abs(float(b[metric])) if gate.relative else 1.0
    margin = gate.margin * scale
    sb, sn = b.get(f"{metric}_std"), n.get(f"{metric}_std")
    if _na(sb) != _na(sn):  # one side has a spread (>= 2 seeds): the same scenario, the same noise
        sb = sn = sb if _na(sn) else sn
    # A row whose noise is secret by design: two seeds cannot estimate its spread (four fresh-clone
    # seeds of the CPU privacy suite's epsilon-1 row spanned FID 110.7-188.5), so its band is never
    # less than the gate's noise floor, spread or not.
    floor = gate.noise_floor * scale if gate.noise_floor is not None and secret_noise(n.get("dp_mode", "")) else 0.0
    if _na(sb) or _na(sn):
        return max(margin, floor)
    se = math.sqrt(float(sb) ** 2 / int(b["n_seeds"]) + float(sn) ** 2 / int(n["n_seeds"]))
    return max(sigmas * se, margin, floor)


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
