"""The metric schema: every column of ``leaderboard.csv`` and ``attacks.csv``, and every key of a run's
``metrics.json``, declared once.

A :class:`Column` says what a column is (dtype, unit, one line of documentation), where its values come
from (the scenario, the run's metrics, its environment, or derived), how the seeds of a scenario are
aggregated, whether ``bench compare`` gates it and how the report shows it. Everything else is derived
from these declarations: the CSV columns and dtypes (:mod:`benchmark.leaderboard`), the aggregation over
seeds (:func:`aggregate`), the regression gates (:mod:`benchmark.compare`), the report's table
(:mod:`benchmark.report`), the check of ``metrics.json`` (:func:`check_metrics`, called by the runner)
and the column tables of results/README.md (:func:`update_doc`, ``scripts/schema_doc.py``).

A new metric column is one :class:`Column` here (and the code that measures it writes the key into
metrics.json); results/README.md's column tables are then regenerated from it
(``scripts/schema_doc.py``, a generated file: a test fails until it is). Standard library only: ``bench --help`` and ``bench compare`` import this module.
"""

from __future__ import annotations

import math
import numbers
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from privacy.mechanisms import get_mechanism, mechanism_names

# Version 2: schema_version column, run date, mia_best_attack, a *_std column for every metric the
# regression gate compares, attacks.csv. Version 3: the audit columns (epsilon_audited, audit_unit,
# audit_ceiling, audit_verdict; epsilon_empirical_lb a bound for the row, no longer a mean over seeds).
# Version 4: batch_size, pretrain, pretrain_epochs (public pretraining, per-row budgets).
# Version 5: neighbouring_relation, epsilon_estimate (issue 25). A version-4 board is read with
# neighbouring_relation derived from its dp_mode (a property of the mechanism) and epsilon_estimate
# empty (its runs' estimates were not published): :data:`UPGRADES`.
# Bump it whenever a column is added, removed or changes meaning.
SCHEMA_VERSION = 5

DTYPES_PANDAS = {"str": "string", "int": "Int64", "float": "float64", "bool": "boolean"}
SOURCES = {"scenario": "scenario.json", "metric": "metrics.json", "environment": "environment.json",
           "attack": "attacks.json", "row": "leaderboard row", "derived": "derived"}
# A derived column's ``derive`` also gets ``audit``: each seed's attacks.json ``audit`` record ({} if none).
# How the values of a scenario's seeds become one cell, as the documentation words it.
AGGREGATIONS = {
    "first": "the scenario's (same for every seed)",
    "mean": "mean",
    "mean_std": "mean; std in `<column>_std`",
    "max": "max",
    "min": "min (empty unless every seed has it)",
    "joined": "distinct values, `;`-joined",
    "any": "True if any seed (empty if none has it)",
    "count": "count",
    "seeds": "sorted, space-separated",
    "std": "std (ddof=1; empty for one seed)",
}


class SchemaError(ValueError):
    """A run's metrics or a column declaration do not fit the schema (one-line message)."""


@dataclass(frozen=True)
class Gate:
    """A regression gate of ``bench compare``: which direction is worse, and the default margin."""

    lower_is_better: bool
    margin: float
    relative: bool  # margin (and noise_floor) as a fraction of the baseline value
    # The least band of a DP row, whose noise no run replays (benchmark.compare.secret_noise), spread
    # or not: two runs of the same commit differ by that noise, and two seeds do not estimate it.
    # Sized so that chance-level draws pass: FID, KID and inversion from the published DP rows'
    # spread; the attack columns from the null of a DP row's best-of-three attacks at 256 candidates
    # and accuracy from twelve draws of the privacy suite's epsilon-1 row (results/README.md,
    # "Regression gate"; tests/test_compare.py tests both).
    noise_floor: float | None = None

    def _fmt(self, v: float) -> str:
        return f"{v:.0%} of base" if self.relative else f"{v:g}"

    def describe(self) -> str:
        return (f"{'lower' if self.lower_is_better else 'higher'} is better, margin {self._fmt(self.margin)}"
                + (f", noise floor {self._fmt(self.noise_floor)}" if self.noise_floor is not None else ""))


@dataclass(frozen=True)
class Shown:
    """How results/<suite>/README.md shows a column (its table has a column for every Shown one)."""

    header: str
    fmt: str = ".3g"         # format spec of a float cell
    std: bool = False        # "mean ± std" (the column's *_std)
    always: bool = False     # a table column even where every row is empty
    when: str | None = None  # the table column, and each cell, only where this column has a value


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str                  # str, int, float, bool
    source: str                 # see SOURCES
    agg: str                    # see AGGREGATIONS
    doc: str                    # one line for results/README.md
    key: str | None = None      # the key in the source, where it is not the column's name
    unit: str = ""
    better: str = ""            # which direction is better, for the documentation
    gate: Gate | None = None
    report: Shown | None = None
    required: bool = True       # source "metric": every metrics.json has the key
    nullable: bool = False      # source "metric": the key may be null (not measured in this run)
    derive: Callable[[dict], Any] | None = None  # source "derived": sources -> value
    # The values the metric can take (a gate's power calls a regression past them unreachable:
    # benchmark.compare.gate_power); None: unbounded.
    bounds: tuple[float, float] | None = None

    def __post_init__(self):
        problem = (f"dtype {self.dtype!r}" if self.dtype not in DTYPES_PANDAS
                   else f"source {self.source!r}" if self.source not in SOURCES
                   else f"aggregation {self.agg!r}" if self.agg not in AGGREGATIONS
                   else "a derived column needs derive=" if (self.source == "derived") != (self.derive is not None)
                   else "a gate needs a float column" if self.gate and self.dtype != "float"
                   else "")
        if problem:
            raise SchemaError(f"column {self.name!r}: {problem}")

    @property
    def source_key(self) -> str:
        return self.key or self.name

    @property
    def std(self) -> Column | None:
        """The ``<name>_std`` column of a mean_std column."""
        if self.agg != "mean_std":
            return None
        return Column(f"{self.name}_std", "float", "derived", "std", "its std over seeds", unit=self.unit,
                      derive=lambda s: None)


@dataclass(frozen=True)
class RunField:
    """A key of metrics.json that no leaderboard column reads (kept in the run record only)."""

    name: str
    dtype: str
    doc: str
    required: bool = True
    nullable: bool = False
    unit: str = ""


def _metric(name, dtype, agg, doc, **kw) -> Column:
    return Column(name, dtype, "metric", agg, doc, **kw)


def _scenario(name, dtype, doc, key=None, **kw) -> Column:
    return Column(name, dtype, "scenario", "first", doc, key=key, **kw)


def _env(name, doc, key=None, agg="joined") -> Column:
    return Column(name, "str", "environment", agg, doc, key=key)


_OPTIONAL = {"required": False, "nullable": True}  # a metric only some runs measure
_NO_DP = {"nullable": True}                        # a privacy metric, null without DP

# leaderboard.csv, in CSV order (a mean_std column is followed by its <name>_std) --------------------
LEADERBOARD: list[Column] = [
    Column("schema_version", "int", "derived", "first", f"version of these columns ({SCHEMA_VERSION})",
           derive=lambda s: SCHEMA_VERSION),
    _scenario("suite", "str", "suite name (`bench list`)"),
    _scenario("scenario", "str", "scenario name", key="name", report=Shown("scenario", always=True)),
    _scenario("scenario_hash", "str", "sha256 prefix of the scenario definition (every field but seeds and suite)",
              key="hash"),
    _scenario("scale", "str", "`cpu` or `gpu`: how big the same scenario was run"),
    Column("dataset", "str", "derived", "first", "e.g. `mnist-embedded`; a folder of one's own as `folder:<its last "
           "path component>` (the path itself, a machine's directory layout, is not published)",
           derive=lambda s: _published_dataset(s["scenario"][0]["dataset"])),
    _scenario("partition", "str", "`iid`, `dirichlet-<alpha>`", report=Shown("partition", always=True)),
    _scenario("num_clients", "int", "clients N"),
    _scenario("clients_per_round", "int", "clients sampled per round"),
    _scenario("rounds", "int", "federated rounds"),
    _scenario("local_epochs", "int", "local epochs per round"),
    _scenario("batch_size", "int", "local batch size (under DP-SGD the expected Poisson batch)"),
    _scenario("pretrain", "str", "public dataset the model was pretrained on before federated training "
              "(benchmark.pretrain); empty: random initialisation"),
    _scenario("pretrain_epochs", "int", "epochs of public pretraining (0: none)"),
    _scenario("model", "str", "UNet config (`bench list --models`)"),
    _scenario("dp_mode", "str", ", ".join(f"`{n}`" for n in mechanism_names(plugins=False)) + " (privacy/mechanisms)",
              report=Shown("DP", always=True)),
    Column("dp_level", "str", "derived", "first", "`sample` (local DP-SGD) or `client` (central DP); empty without DP",
           derive=lambda s: get_mechanism(s["scenario"][0]["dp_mode"]).dp_level),  # unknown: one-line error
    _metric("epsilon", "float", "max", "claimed epsilon at `delta` (max over clients and seeds); empty without DP",
            better="lower = more private", report=Shown("epsilon ↓"), **_NO_DP),
    Column("neighbouring_relation", "str", "derived", "first", "the neighbouring relation `epsilon` holds under "
           "(the mechanism's, `privacy.mechanisms`: e.g. `add/remove one image`, `zero-out one client ...`); "
           "empty without DP", derive=lambda s: _relation(s["scenario"][0]["dp_mode"])),
    _scenario("delta", "float", "delta of the DP guarantee", report=Shown("delta", fmt="g", when="epsilon")),
    _metric("accountant", "str", "joined", "`opacus-rdp`, `opacus-prv`, `flwr-rdp-no-amplification`, `opacus-rdp-poisson-clients`, "
            "`dp-accounting-rdp-tree-replace-special`", **_NO_DP),
    _metric("noise_multiplier", "float", "mean", "Gaussian noise std / clipping norm (local DP-SGD: the worst "
            "client's, whose epsilon is published)", **_NO_DP),
    _metric("max_grad_norm", "float", "mean", "clipping norm (per sample: local; per update: central)", **_NO_DP),
    _metric("sample_rate", "float", "mean", "Poisson rate q (local: the worst client's) or clients sampled / N "
            "(central)", **_NO_DP),
    _metric("fid", "float", "mean_std", "Frechet Inception distance", better="lower",
            gate=Gate(True, 0.10, True, noise_floor=0.75),
            report=Shown("FID ↓", fmt=".1f", std=True, always=True)),
    _metric("fid_impl", "str", "joined",
            "extractor, mode and resize; FIDs with different `fid_impl` are never comparable"),
    _metric("fid_n_samples", "int", "min", "generated images (= real reference images) per FID"),
    _metric("fid_floor", "float", "mean", "the FID floor at this n: real training images against the same "
            "reference (a perfect generator scores this, not 0)", better="lower", **_OPTIONAL),
    _metric("kid", "float", "mean_std", "kernel Inception distance (clean-fid), same features as FID", better="lower",
            gate=Gate(True, 0.10, True, noise_floor=1.50), report=Shown("KID ↓", fmt=".3f", std=True)),
    _metric("downstream_acc", "float", "mean_std", "accuracy on the real test split of a small CNN trained on "
            "generated images (class-conditional scenarios)", unit="fraction", better="higher",
            gate=Gate(False, 0.02, False, noise_floor=0.50), bounds=(0.0, 1.0),
            report=Shown("downstream acc ↑", fmt=".3f", std=True), **_OPTIONAL),
    _metric("mia_auc", "float", "mean_std", "best membership-inference attack's ROC AUC (best = highest AUC per run)",
            better="lower (0.5 = chance)", gate=Gate(True, 0.02, False, noise_floor=0.13), bounds=(0.0, 1.0),
            report=Shown("MIA AUC ↓", fmt=".3f", std=True), **_OPTIONAL),
    _metric("mia_best_attack", "str", "joined", "the attack(s) with the highest AUC", **_OPTIONAL),
    _metric("mia_tpr_at_1pct_fpr", "float", "mean_std", "best attack's TPR at 1% FPR", unit="fraction",
            better="lower (0.01 = chance)", gate=Gate(True, 0.02, False, noise_floor=0.10), bounds=(0.0, 1.0),
            report=Shown("TPR@1%FPR ↓", fmt=".3f"),
            **_OPTIONAL),
    _metric("mia_tpr_at_0_1pct_fpr", "float", "mean_std", "best attack's TPR at 0.1% FPR", unit="fraction",
            better="lower (0.001 = chance)", gate=Gate(True, 0.01, False, noise_floor=0.10), bounds=(0.0, 1.0),
            report=Shown("TPR@0.1%FPR ↓", fmt=".3f"),
            **_OPTIONAL),
    _metric("inversion_psnr", "float", "mean_std", "gradient inversion reconstruction PSNR", unit="dB", better="lower",
            gate=Gate(True, 1.0, False, noise_floor=10.0), report=Shown("inversion PSNR (dB) ↓", fmt=".1f"),
            **_OPTIONAL),
    _metric("inversion_ssim", "float", "mean_std", "gradient inversion reconstruction SSIM (0-1)", better="lower",
            gate=Gate(True, 0.05, False, noise_floor=0.7), bounds=(-1.0, 1.0),
            report=Shown("inversion SSIM ↓", fmt=".3f"),
            **_OPTIONAL),
    _metric("epsilon_audited", "float", "max", "the epsilon the audit holds the row to: the claim for the unit its "
            "headline tests test (`audit_unit`): a central row's canary clients are held to its client-level "
            "`epsilon`; membership attacks test images, and a client-level claim is turned into its image-level "
            "epsilon for them (the mechanism's `image_epsilon`, `privacy.mechanisms`); empty without DP",
            **_OPTIONAL),
    _metric("audit_unit", "str", "joined", "what the headline tests' candidates are: `client` (a central row's "
            "canary clients, `client_canaries`), else `image` (membership attacks, gradient canaries); every "
            "other unit's tests are held to that unit's own claim; empty without DP", **_OPTIONAL),
    Column("epsilon_empirical_lb", "float", "derived", "max", "audit: a 95 % lower bound on epsilon for the row: the "
           "max over seeds of each seed's bound at its share of 0.05 (one seed 0.05, two 0.025 each, from three "
           "on 0.025 for the lowest and the rest split equally; union bound; recomputed from "
           "attacks.json's audit evidence; not gated by `bench compare`: `audit_failed` is)", better="lower",
           report=Shown("epsilon lb"), derive=lambda s: _row_audit(s)[0]),
    Column("audit_ceiling", "float", "derived", "max", "the largest `epsilon_empirical_lb` these candidate counts "
           "could certify (a perfect attack's bound at the same counts, split, guesses and correction)",
           report=Shown("audit ceiling", when="epsilon_empirical_lb"), derive=lambda s: _row_audit(s)[1]),
    Column("audit_verdict", "str", "derived", "first", "`failed` (`epsilon_empirical_lb` > `epsilon_audited`, or "
           "another unit's bound above that unit's claim: attacks.json's `audit.failed_units`), "
           "`passed` (it is not, and `audit_ceiling` > `epsilon_audited`), `inconclusive` (`audit_ceiling` <= "
           "`epsilon_audited`: the audit could not have failed); empty without a claim", better="never failed",
           report=Shown("audit"), derive=lambda s: _row_audit(s)[2]),
    Column("audit_failed", "bool", "derived", "first", "`audit_verdict` is `failed`; empty where nothing is claimed",
           better="must be False", derive=lambda s: _row_audit(s)[3]),
    Column("epsilon_estimate", "float", "derived", "mean", "an epsilon *estimate*, not a bound (Andrew et al. "
           "2024): a Gaussian fitted to the included white-box canaries' scores and one to the excluded ones', "
           "and the epsilon at `delta` of telling them apart; the canaries of the row's `audit_unit`, mean over "
           "seeds (attacks.json `gradient_canaries.<name>.epsilon_estimate`); no confidence, never a verdict; "
           "64 is a cap (the two fits apart beyond it, as with the noise off); empty without white-box canaries",
           report=Shown("epsilon estimate", when="epsilon_estimate"), derive=lambda s: _estimate(s)),
    Column("n_seeds", "int", "scenario", "count", "seeds aggregated", key="seed", report=Shown("seeds")),
    Column("seeds", "str", "scenario", "seeds", "the seeds", key="seed"),
    _metric("train_s", "float", "mean", "federated training wall time", unit="s", better="lower"),
    _env("date", "when the newest seed's run finished (ISO 8601, UTC)", agg="max"),
    _env("device", "device name(s) the runs used", key="device_name"),
    _env("git_sha", "commit(s) of the code that ran, `-dirty` if modified"),
    _env("torch", "version(s)"),
    _env("opacus", "version(s)"),
    _env("flwr", "version(s)"),
    _env("diffusers", "version(s)"),
]

# attacks.csv: one row per (scenario definition, membership-inference attack), from attacks.json ------
_SAME = "as in leaderboard.csv"
ATTACKS: list[Column] = [
    Column("schema_version", "int", "derived", "first", _SAME, derive=lambda s: SCHEMA_VERSION),
    *(Column(c, "str", "row", "first", _SAME) for c in ("suite", "scenario", "scenario_hash", "scale", "partition",
                                                         "dp_mode")),
    Column("epsilon", "float", "row", "first", _SAME),
    Column("attack", "str", "derived", "first", "`mia-loss`, `mia-secmi`, `mia-pia`, ...", derive=lambda s: s["name"]),
    Column("auc", "float", "attack", "mean_std", "ROC AUC", better="lower (0.5 = chance)"),
    Column("tpr_at_1pct_fpr", "float", "attack", "mean", "TPR at 1% FPR", unit="fraction", better="lower"),
    Column("tpr_at_0_1pct_fpr", "float", "attack", "mean", "TPR at 0.1% FPR", unit="fraction", better="lower"),
    Column("epsilon_lb", "float", "attack", "mean", "mean over seeds of this attack's natural-candidate bound "
           "(each at its run's Bonferroni level): a summary, not a bound (the row's bound is the leaderboard's "
           "`epsilon_empirical_lb`)", better="lower"),
    Column("n_members", "int", "attack", "min", "member candidates scored"),
    Column("n_nonmembers", "int", "attack", "min", "non-member candidates scored"),
    Column("n_seeds", "int", "attack", "count", "seeds that ran the attack"),
]

# metrics.json keys that no leaderboard column reads (the run record keeps them) ---------------------
RUN_ONLY: list[RunField] = [
    RunField("dp_mode", "str", "the scenario's DP mode"),
    RunField("delta", "float", "delta of the DP guarantee; null without DP", nullable=True),
    RunField("epsilon_target", "float", "the scenario's target epsilon (DP runs)", required=False, nullable=True),
    RunField("grad_sample_mode", "str", "per-sample gradient mode (local DP-SGD)", required=False),
    RunField("noise_multiplicity", "int", "noise draws per image (local DP-SGD)", required=False),
    RunField("fid_n_real", "int", "real reference images per FID"),
    RunField("fid_reference", "str", "key of the FID reference images"),
    RunField("sample_s", "float", "sampling wall time", unit="s"),
    RunField("model_params", "int", "the UNet's parameter count", required=False),
    RunField("model_config", "str", "the UNet: its registered name, or `config-<sha256 12>` of a config:PATH file's "
             "bytes", required=False),
    RunField("fid_s", "float", "FID wall time", unit="s"),
    RunField("downstream_s", "float", "downstream classifier's wall time (training and scoring)", unit="s",
             required=False),
    RunField("kid_floor", "float", "KID of real training images against the reference (the floor at this n)",
             required=False, nullable=True),
    RunField("final_train_loss", "float", "training loss of the last round; null under DP (clients do not send it)",
             nullable=True),
    RunField("downstream_n_train", "int", "generated images the downstream classifier trained on", required=False),
    RunField("downstream_n_test", "int", "real test images it was scored on", required=False),
    RunField("mia_min_fpr", "float", "smallest non-zero FPR the best attack's candidates resolve", required=False),
    RunField("mia_n_candidates", "int", "members + non-members the best attack scored", required=False),
    RunField("inversion_fedavg_psnr", "float", "inversion PSNR of a FedAvg update", unit="dB", required=False,
             nullable=True),
    RunField("inversion_fedavg_ssim", "float", "inversion SSIM of a FedAvg update", required=False, nullable=True),
    RunField("attack_s", "float", "attacks' wall time", unit="s", required=False),
    RunField("epsilon_empirical_lb", "float", "this seed's 95 % lower bound on epsilon (Bonferroni over its tests)",
             **_OPTIONAL),
    RunField("audit_ceiling", "float", "the largest bound this seed's candidate counts could certify", **_OPTIONAL),
    RunField("audit_verdict", "str", "this seed's `failed` / `passed` / `inconclusive`; null without a claim",
             **_OPTIONAL),
    RunField("audit_failed", "bool", "this seed's bound exceeds `epsilon_audited`; null without a claim",
             **_OPTIONAL),
]


def _row_audit(sources: dict) -> tuple:
    """(epsilon_empirical_lb, audit_ceiling, audit_verdict, audit_failed) of a row. From every seed's
    audit evidence (attacks.json, source ``audit``): per unit the max over seeds of each seed's bound
    at its share of alpha (:func:`attacks.audit.seed_alphas`), a (1 - alpha) lower bound for the row,
    each unit held to its own claim; the
    bound and ceiling shown are the headline unit's (``audit_unit``; :func:`attacks.audit.seeds_judgement`).
    Runs recorded before the evidence was kept: one seed's own bound is still one; of several seeds
    nothing valid can be said (bound empty), and ``audit_failed`` is the seeds' own flags."""
    metrics = sources.get("metric") or []
    records = sources.get("audit") or []
    if records and all(r and r.get("tests") for r in records):
        from attacks.audit import seeds_judgement  # numpy and scipy, at summarize time only

        j = seeds_judgement(records)
        if j.claim is None and not j.failed_units:
            return j.bound, j.ceiling, None, None
        return j.bound, j.ceiling, j.verdict, j.verdict == "failed"
    claims = [m.get("epsilon_audited") for m in metrics if m.get("epsilon_audited") is not None]
    claim = max(claims) if claims else None
    lb = ceiling = None
    if len(metrics) == 1:
        lb, ceiling = metrics[0].get("epsilon_empirical_lb"), metrics[0].get("audit_ceiling")
    if claim is None or lb is None or ceiling is None:
        flagged = _any([m.get("audit_failed") for m in metrics])
        return lb, ceiling, "failed" if flagged else None, flagged
    verdict = "failed" if lb > claim else "passed" if ceiling > claim else "inconclusive"
    return lb, ceiling, verdict, verdict == "failed"


def _published_dataset(name: str) -> str:
    if name.startswith("folder:"):
        return "folder:" + (name[len("folder:"):].rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or "/")
    return name


def _relation(dp_mode: str) -> str | None:
    return get_mechanism(dp_mode).epsilon_relation  # an unknown mode: a one-line error


def _upgraded_relation(row: dict) -> str | None:
    """A version-4 row's relation: its mechanism's; empty where the mode is not known here (a plugin
    that is not installed: its relation is not ours to guess)."""
    from privacy.modes import ModeError

    try:
        return None if not isinstance(row.get("dp_mode"), str) else _relation(row["dp_mode"])
    except ModeError:
        return None


def _estimate(sources: dict) -> float | None:
    """Mean over seeds of each seed's white-box epsilon estimate (source ``canaries``: attacks.json
    ``gradient_canaries``) for the canaries of the row's headline unit (``client`` before ``image``,
    as :data:`attacks.audit.HEADLINE_UNITS`; within a seed, the largest of that unit's sets)."""
    per_seed = []
    for sets in sources.get("canaries") or []:
        units = {(v.get("unit") or "image") for v in sets.values()}
        unit = next((u for u in ("client", "image") if u in units), None)
        values = [v["epsilon_estimate"] for v in sets.values()
                  if (v.get("unit") or "image") == unit and v.get("epsilon_estimate") is not None]
        if values:
            per_seed.append(max(values))
    return mean(per_seed)


# Older versions a reader upgrades (version -> the columns it lacks, each with how it is filled from
# the row: a function of the row, or None for empty). A migrated board says so nowhere else; the
# reader (benchmark.leaderboard.read_leaderboard) fills them and sets schema_version to the current.
UPGRADES: dict[int, dict[str, Callable[[dict], Any] | None]] = {
    4: {"neighbouring_relation": _upgraded_relation, "epsilon_estimate": None},
}


# Derived views, rebuilt in place by _refresh() so that importers of these names see a registered column
COLUMNS: list[str] = []
DTYPES: dict[str, str] = {}
GATED: dict[str, Gate] = {}
SHOWN: list[Column] = []
METRICS: dict[str, Column | RunField] = {}
ATTACK_COLUMNS: list[str] = []
ATTACK_DTYPES: dict[str, str] = {}


def expand(columns: list[Column]) -> list[Column]:
    """The columns in CSV order, each mean_std column followed by its ``<name>_std``."""
    return [c for col in columns for c in (col, col.std) if c is not None]


def _refresh() -> None:
    names = [c.name for c in expand(LEADERBOARD)]
    dup = sorted({n for n in names if names.count(n) > 1} | ({c.name for c in RUN_ONLY}
                 & {c.source_key for c in LEADERBOARD if c.source == "metric"}))
    if dup:
        raise SchemaError(f"declared more than once: {', '.join(dup)}")
    COLUMNS[:] = names
    DTYPES.clear()
    DTYPES.update({c.name: DTYPES_PANDAS[c.dtype] for c in expand(LEADERBOARD)})
    GATED.clear()
    GATED.update({c.name: c.gate for c in LEADERBOARD if c.gate})
    SHOWN[:] = [c for c in LEADERBOARD if c.report]
    METRICS.clear()
    METRICS.update({c.source_key: c for c in LEADERBOARD if c.source == "metric"} | {f.name: f for f in RUN_ONLY})
    ATTACK_COLUMNS[:] = [c.name for c in expand(ATTACKS)]
    ATTACK_DTYPES.clear()
    ATTACK_DTYPES.update({c.name: DTYPES_PANDAS[c.dtype] for c in expand(ATTACKS)})


_refresh()


@contextmanager
def registered(column: Column, after: str | None = None) -> Iterator[Column]:
    """A leaderboard column added to the schema for the duration of a ``with`` block (tests; a real
    column is declared in :data:`LEADERBOARD`)."""
    at = len(LEADERBOARD) if after is None else [c.name for c in LEADERBOARD].index(after) + 1
    LEADERBOARD.insert(at, column)
    try:
        _refresh()
        yield column
    finally:
        LEADERBOARD.remove(column)
        _refresh()


# Aggregation over seeds ------------------------------------------------------------------------------
def _present(values: list) -> list[float]:
    """The values that were measured (None and NaN mean 'not computed for this seed')."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean(values: list) -> float | None:
    xs = _present(values)
    return sum(xs) / len(xs) if xs else None


def std(values: list) -> float | None:
    xs = _present(values)
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _max(values: list, dtype: str):
    xs = [v for v in values if v is not None and v != ""]
    if not xs:
        return None
    return max(float(v) for v in xs) if dtype == "float" else max(xs)


def _min(values: list, dtype: str):
    if not values or any(v is None for v in values):
        return None
    return min(int(v) if dtype == "int" else float(v) for v in values)


def _joined(values: list) -> str | None:
    uniq = sorted({str(v) for v in values if v is not None})
    return ";".join(uniq) if uniq else None


def _any(values: list) -> bool | None:
    xs = [v for v in values if v is not None]
    return any(xs) if xs else None


_AGG: dict[str, Callable[[list, str], Any]] = {
    "first": lambda v, t: v[0] if v else None,
    "mean": lambda v, t: mean(v),
    "mean_std": lambda v, t: mean(v),
    "max": _max,
    "min": _min,
    "joined": lambda v, t: _joined(v),
    "any": lambda v, t: _any(v),
    "count": lambda v, t: len(v),
    "seeds": lambda v, t: " ".join(str(s) for s in sorted(int(x) for x in v)),
}


def aggregate(columns: list[Column], sources: dict[str, Any]) -> dict:
    """One CSV row: every column of ``columns`` (and its ``_std``) from ``sources`` (source name ->
    one dict per seed; a derived column's ``derive`` gets ``sources`` itself)."""
    row = {}
    for c in columns:
        if c.source == "derived":
            row[c.name] = c.derive(sources)
            continue
        values = [s.get(c.source_key) for s in sources[c.source]]
        row[c.name] = _AGG[c.agg](values, c.dtype)
        if c.agg == "mean_std":
            row[f"{c.name}_std"] = std(values)
    return row


# metrics.json ----------------------------------------------------------------------------------------
def _type_ok(value, dtype: str) -> bool:
    t = type(value)
    is_bool = isinstance(value, bool) or (t.__module__ == "numpy" and t.__name__ in ("bool", "bool_"))  # no numpy
    if dtype == "bool":
        return is_bool
    if dtype == "str":
        return isinstance(value, str)
    if is_bool:
        return False
    return isinstance(value, numbers.Integral if dtype == "int" else numbers.Real)


def check_metrics(metrics: dict, where: str = "metrics.json") -> dict:
    """``metrics`` if it fits :data:`METRICS` (known keys, every required key, declared types); else
    :class:`SchemaError` naming every problem on one line."""
    problems = []
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (declare them in benchmark/schema.py)")
    missing = [k for k, f in METRICS.items() if f.required and k not in metrics]
    if missing:
        problems.append(f"missing key(s) {', '.join(missing)}")
    for k, v in metrics.items():
        f = METRICS.get(k)
        if f is None:
            continue
        if v is None:
            if not f.nullable:
                problems.append(f"{k} is null")
        elif not _type_ok(v, f.dtype):
            problems.append(f"{k} must be {f.dtype}, got {type(v).__name__} {v!r:.40}")
    if problems:
        raise SchemaError(f"{where}: " + "; ".join(problems))
    return metrics


# Documentation: the tables of results/README.md -----------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_cell(c) for c in r).rstrip() + " |" for r in rows])


def _origin(c: Column) -> str:
    keyed = c.source in ("scenario", "metric", "environment", "attack") and c.agg != "count"
    return SOURCES[c.source] + (f" `{c.source_key}`" if keyed else "")


def _over_seeds(c: Column) -> str:
    return "" if c.source in ("derived", "row") and c.agg == "first" else AGGREGATIONS[c.agg]


def column_table(columns: list[Column]) -> str:
    rows = [[f"`{c.name}`", c.dtype, c.unit, _origin(c), _over_seeds(c), c.doc, c.better] for c in expand(columns)]
    return _table(["column", "dtype", "unit", "from", "over seeds", "meaning", "better"], rows)


def gate_table() -> str:
    def margin(c: Column) -> str:
        g = c.gate
        if g.relative:
            return f"{g.margin:.0%} of the baseline value"
        return f"{g.margin:g}" + (f" {c.unit}" if c.unit and c.unit != "fraction" else "")

    def floor(c: Column) -> str:
        g = c.gate
        if g.noise_floor is None:
            return ""
        return f"{g.noise_floor:.0%}" if g.relative else f"{g.noise_floor:g}" + (
            f" {c.unit}" if c.unit and c.unit != "fraction" else "")

    rows = [[f"`{c.name}`", "higher" if c.gate.lower_is_better else "lower", margin(c), floor(c)]
            for c in LEADERBOARD if c.gate]
    return _table(["gated metric", "worse when", "default margin (`--margin METRIC=VALUE`, absolute or `N%`)",
                   "noise floor (DP rows)"], rows)


def metrics_table() -> str:
    rows = [[f"`{k}`", f.dtype, f.unit, "yes" if f.required else "", "yes" if f.nullable else "",
             f.doc] for k, f in METRICS.items()]
    return _table(["key", "dtype", "unit", "always there", "may be null", "meaning"], rows)


def doc_tables() -> dict[str, str]:
    """Marker name -> the Markdown table results/README.md holds between its schema markers."""
    return {"leaderboard": column_table(LEADERBOARD), "attacks": column_table(ATTACKS), "gates": gate_table(),
            "metrics": metrics_table()}


def update_doc(text: str) -> str:
    """``text`` with every table between ``<!-- schema:NAME -->`` and ``<!-- /schema:NAME -->``
    regenerated from the schema (``python scripts/schema_doc.py`` writes it to results/README.md)."""
    for name, table in doc_tables().items():
        pattern = re.compile(rf"(<!-- schema:{name} -->\n).*?(\n<!-- /schema:{name} -->)", re.S)
        if not pattern.search(text):
            raise SchemaError(f"no <!-- schema:{name} --> ... <!-- /schema:{name} --> markers")
        text = pattern.sub(lambda m: m.group(1) + table + m.group(2), text)
    return text
