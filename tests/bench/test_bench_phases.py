"""Where one run of the ``privacy`` suite spends its time: train, sample, FID, downstream, attacks.

A measurement for the next budget decision, never an assertion on time. One scenario of the
suite as published (``privacy-iid-nodp`` at the ``cpu`` scale) with its rounds cut to 4, so that the
benchmark tier stays short: per round the training time scales linearly (the suite runs 20 rounds),
every other phase is the suite's own. The phase times land in the benchmark's ``extra_info``
(``--benchmark-json``, or the table's columns with ``--benchmark-columns``).

The federation's overhead, per round (the median over rounds 2-4; round 1 starts the actors):
``round_s`` is the round's wall time on the server's clock; ``compute_s_sum`` / ``compute_s_max``
the clients' training loops summed and the longest one (``client_s_*``: the whole train handler,
set-up included); ``round_ideal_s`` what the clients' compute needs on the cores the federation was
given, ``max(compute_s_max, compute_s_sum / cores)``; ``round_overhead_x`` = round_s / round_ideal_s.
"""

import dataclasses
import json
import statistics

from benchmark.runner import RunOptions, run_one
from benchmark.suites import get_scenario

PHASES = ("train_s", "sample_s", "fid_s", "downstream_s", "attack_s")


def test_phases_of_one_privacy_run(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))  # the FID statistics included, as a fresh machine
    full = get_scenario("privacy-iid-nodp")
    scenario = dataclasses.replace(full, rounds=4, seeds=(0,))
    opts = RunOptions(out_dir=tmp_path / "runs", progress=False)
    folder = benchmark.pedantic(lambda: run_one(scenario, 0, opts), rounds=1, iterations=1)
    metrics = json.loads((folder / "metrics.json").read_text())
    benchmark.extra_info.update({k: round(metrics[k], 2) for k in PHASES})
    benchmark.extra_info["rounds"] = f"{scenario.rounds} of the suite's {full.rounds}"
    benchmark.extra_info["train_s_per_round"] = round(metrics["train_s"] / scenario.rounds, 2)
    history = json.loads((folder / "history.json").read_text())
    benchmark.extra_info.update(round_overhead(history["rounds"][1:], cores=history["client_cores"]))
    # The public checkpoint ships with the package (benchmark/pretrain.py): a fresh machine does not train it.
    assert not (tmp_path / "cache" / "pretrained").exists()
    benchmark.extra_info["pretrain"] = "shipped"
    for k in PHASES:
        assert metrics[k] >= 0


def round_overhead(rounds: list[dict], *, cores: int) -> dict:
    """Per-round medians of the server's wall time against the clients' compute (see the docstring)."""
    med = {k: statistics.median(r[k] for r in rounds)
           for k in ("round_s", "compute_s_sum", "compute_s_max", "client_s_sum", "client_s_max")}
    ideal = statistics.median(max(r["compute_s_max"], r["compute_s_sum"] / cores) for r in rounds)
    return {**{k: round(v, 2) for k, v in med.items()}, "cores": cores, "round_ideal_s": round(ideal, 2),
            "round_overhead_x": round(med["round_s"] / ideal, 2)}


CANARY_PAIRS = 3  # with / without, alternating which goes first: medians over the pairs


def test_canary_cost_of_a_dp_run(benchmark, tmp_path, monkeypatch):
    """What the white-box audit costs (issue 25: at most 10 % more wall time): the privacy suite's
    epsilon-4 row with its 10,000 gradient canaries and the same row without, side by side in one
    process, CANARY_PAIRS times, the order alternating (rounds cut to 3; every other phase
    the suite's own). ``extra_info`` holds each phase's median for both and their ratios, the
    median per-round training time of rounds 2 on (``train_round_s_*``: the canaries' part of a
    round, without round 1's actor start), and the whole run's ratio at the suite's 20 rounds
    (``run_ratio_at_20_rounds``: round 1 as measured, rounds 2-20 at the median later round, the
    other phases as measured). A measurement, never an assertion on time."""
    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))
    full = get_scenario("privacy-iid-local-eps4")
    with_canaries = dataclasses.replace(full, rounds=3, seeds=(0,))
    without = dataclasses.replace(with_canaries, gradient_canaries=0)
    opts = RunOptions(out_dir=tmp_path / "runs", progress=False)
    run_one(without, 0, opts)  # the FID statistics, once, before either is timed
    times = {"with": [], "without": []}

    def pairs():
        for rep in range(CANARY_PAIRS):
            order = (("without", without), ("with", with_canaries))
            for tag, s in (order if rep % 2 == 0 else order[::-1]):
                folder = run_one(s, 1, RunOptions(out_dir=tmp_path / f"timed-{rep}", progress=False))
                m = json.loads((folder / "metrics.json").read_text())
                rounds = json.loads((folder / "history.json").read_text())["rounds"]
                m["round_1_s"] = rounds[0]["round_s"]
                m["train_round_s"] = statistics.median(r["round_s"] for r in rounds[1:])
                times[tag].append(m)

    benchmark.pedantic(pairs, rounds=1, iterations=1)
    keys = PHASES + ("round_1_s", "train_round_s")
    med = {tag: {k: statistics.median(m[k] for m in runs) for k in keys} for tag, runs in times.items()}
    for tag in ("without", "with"):
        benchmark.extra_info.update({f"{k}_{tag}": round(med[tag][k], 2) for k in keys})
    for k in ("train_s", "train_round_s", "attack_s"):
        benchmark.extra_info[f"{k}_ratio"] = round(med["with"][k] / med["without"][k], 3)

    def suite_run(m):  # one run of the suite: round 1, 19 later rounds, the rest of training, the other phases
        later = m["train_s"] - m["round_1_s"] - m["train_round_s"] * (with_canaries.rounds - 1)  # set-up outside rounds
        return (m["round_1_s"] + m["train_round_s"] * (full.rounds - 1) + max(later, 0.0)
                + sum(m[k] for k in PHASES if k != "train_s"))

    benchmark.extra_info["pairs"] = CANARY_PAIRS
    benchmark.extra_info["run_ratio_at_20_rounds"] = round(suite_run(med["with"]) / suite_run(med["without"]), 3)
    assert all(m["epsilon"] == times["without"][0]["epsilon"] for runs in times.values() for m in runs)
