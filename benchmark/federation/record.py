"""``history.json``: what the server records of one federated training."""

from __future__ import annotations


def history_record(*, train_s: float, privacy: dict, sampled: dict[int, list[int]], screening: dict[int, dict],
                   train_metrics: dict, round_s: dict[int, float] | None = None) -> dict:
    """The run's training time, its mechanism's ``privacy`` record, and per round: the sampled
    partitions, the screening counts, the aggregated client metrics, the round's wall time on the
    server's clock (``round_s``: from the previous round's aggregate to this one's) and the problems seen."""
    return {
        "train_s": train_s,
        "privacy": privacy,
        "rounds": [
            {"round": r, "sampled_partitions": sampled.get(r, []),
             **{k: v for k, v in screening.get(r, {}).items() if k != "problems"},
             **{k: float(v) for k, v in train_metrics[r].items()},
             **({"round_s": round_s[r]} if round_s and r in round_s else {}),
             "problems": screening.get(r, {}).get("problems", {})}
            for r in sorted(train_metrics)
        ],
    }
