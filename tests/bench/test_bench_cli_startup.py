"""How fast `bench` answers before any work: `bench --help` and a misspelt suite name, each a fresh
interpreter, as a user types them (the goal: under 1 s). Measurements, not assertions: read the
median in the benchmark table (`tox -e bench`, or .ci/run's benchmark step)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench(*args) -> int:
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=REPO, capture_output=True,
                          timeout=60).returncode


@pytest.mark.parametrize("argv, code", [(("--help",), 0), (("run", "--suite", "privcy"), 2)],
                         ids=["help", "misspelt-suite"])
def test_cli_answers_before_any_work(benchmark, argv, code):
    # The exit status is checked so that a broken command is not timed as a fast one.
    assert benchmark.pedantic(_bench, args=argv, rounds=5, iterations=1) == code
