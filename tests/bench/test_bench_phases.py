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
    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))  # pretraining and FID stats included, as a fresh machine
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
    pretrained = next((tmp_path / "cache" / "pretrained").glob("*.json"))
    benchmark.extra_info["pretrain_s_once_per_machine"] = round(json.loads(pretrained.read_text())["train_s"], 2)
    for k in PHASES:
        assert metrics[k] >= 0


def round_overhead(rounds: list[dict], *, cores: int) -> dict:
    """Per-round medians of the server's wall time against the clients' compute (see the docstring)."""
    med = {k: statistics.median(r[k] for r in rounds)
           for k in ("round_s", "compute_s_sum", "compute_s_max", "client_s_sum", "client_s_max")}
    ideal = statistics.median(max(r["compute_s_max"], r["compute_s_sum"] / cores) for r in rounds)
    return {**{k: round(v, 2) for k, v in med.items()}, "cores": cores, "round_ideal_s": round(ideal, 2),
            "round_overhead_x": round(med["round_s"] / ideal, 2)}
