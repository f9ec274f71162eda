#!/usr/bin/env bash
# The regression gate: run a suite with fixed seeds, rebuild its leaderboard, and compare it with the
# committed baseline (`bench compare`: exit 1 on a regression, 2 when the files cannot be compared).
# CI (.github/workflows/gpu-regression.yml) runs exactly this; so can you:
#
#   scripts/regression.sh                                   # regression suite, gpu scale, cuda
#   SCALE=cpu BASELINE=my-cpu-baseline.csv scripts/regression.sh
#   SUITE=privacy SEEDS=0,1,2 scripts/regression.sh        # the whole privacy suite (hours on one GPU)
#
# Settings (environment): SUITE (regression), SCALE (gpu), DEVICE (cuda at gpu scale, else cpu),
# SEEDS (the suite's own, fixed per scale in benchmark/scales.py), WORK (regression-work: runs, new
# leaderboard, comparison), BASELINE (results/$SUITE/leaderboard.csv), RESUME=1 (keep the completed
# runs of an interrupted WORK), COMPARE_ARGS (e.g. "--sigmas 2 --margin fid=5%"), BENCH (bench).
# Over several machines (README, "Several machines: shards"): SHARD=K/N runs shard K of N into
# $WORK/runs and stops (no gate: one shard is not the suite); MERGE="TREE1 TREE2 ..." runs nothing,
# summarizes the shards' run trees into $WORK/results (refused if a run is missing or conflicts)
# and gates that merged leaderboard.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=${SUITE:-regression}
SCALE=${SCALE:-gpu}
DEVICE=${DEVICE:-$([ "$SCALE" = gpu ] && echo cuda || echo cpu)}
WORK=${WORK:-regression-work}
BASELINE=${BASELINE:-results/$SUITE/leaderboard.csv}
BENCH=${BENCH:-bench}
NEW="$WORK/results/$SUITE/leaderboard.csv"

if [ -n "${MERGE:-}" ]; then
    echo "== $BENCH summarize $MERGE (the shards' run trees) into $WORK/results"
    mkdir -p "$WORK"
    # shellcheck disable=SC2086  # MERGE is a list of folders; a conflict or no runs: exit 2 here
    $BENCH summarize $MERGE --results "$WORK/results" --suite "$SUITE" 2> "$WORK/summarize.err"
    cat "$WORK/summarize.err" >&2
    if grep -q INCOMPLETE "$WORK/summarize.err"; then
        echo "regression.sh: a shard's runs are missing (above): not gating a partial leaderboard" >&2
        exit 2
    fi
else
    echo "== $BENCH run --suite $SUITE --scale $SCALE ${SEEDS:+--seeds $SEEDS} --device $DEVICE ${SHARD:+--shard $SHARD} (work: $WORK)"
    # shellcheck disable=SC2086  # BENCH and COMPARE_ARGS are word lists
    $BENCH run --suite "$SUITE" --scale "$SCALE" ${SEEDS:+--seeds "$SEEDS"} --device "$DEVICE" \
        --out "$WORK/runs" --results "$WORK/results" --no-progress ${RESUME:+--resume} ${SHARD:+--shard "$SHARD"}
    if [ -n "${SHARD:-}" ]; then
        echo "== shard $SHARD done: its runs are in $WORK/runs; gate the merged trees with MERGE=\"...\" $0"
        exit 0
    fi
fi

if [ ! -f "$BASELINE" ]; then
    echo "regression.sh: no baseline $BASELINE to compare with; to make this run the baseline:" >&2
    echo "  cp -r $WORK/results/$SUITE/. results/$SUITE/  (and commit results/$SUITE)" >&2
    exit 2
fi

echo "== $BENCH compare $BASELINE $NEW"
status=0
# shellcheck disable=SC2086
$BENCH compare "$BASELINE" "$NEW" --all ${COMPARE_ARGS:-} > "$WORK/compare.txt" || status=$?
cat "$WORK/compare.txt"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    # shellcheck disable=SC2086
    { echo "### bench compare ($SUITE, $SCALE)"; echo;
      $BENCH compare "$BASELINE" "$NEW" --all --markdown ${COMPARE_ARGS:-} 2>&1 || true; } >> "$GITHUB_STEP_SUMMARY"
fi
exit "$status"
