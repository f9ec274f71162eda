#!/usr/bin/env bash
# On the lent GPU machine (no network): install the carried wheels, then run the GPU checks.
# Here: see README "GPU checks" for how .whl/ is filled.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 scripts/gpu_checks.py 2>&1 | grep -v -i "warn"
