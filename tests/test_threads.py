"""One thread policy (benchmark/threads.py): chosen from the cores and the concurrent clients, set once."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from benchmark import threads
from benchmark.federation.client_app import client_threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("cores", "clients", "expected"), [(2, 4, 1), (16, 4, 4), (16, 3, 5), (1, 1, 1), (8, 0, 8)])
def test_a_client_gets_its_share_of_the_cores(cores, clients, expected):
    assert threads.client_cpus(cores, clients) == expected


def test_the_cores_are_the_processes_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert threads.available_cores() == 3


def test_a_node_uses_its_own_setting_then_the_simulations_share_then_its_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 7)
    monkeypatch.setattr("benchmark.federation.client_app.available_cores", lambda: 7)

    def ctx(node_config):
        return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})

    assert client_threads(ctx({"partition-id": 0}), {}) == 7
    assert client_threads(ctx({"partition-id": 0}), {"client-threads": 2}) == 2
    assert client_threads(ctx({"partition-id": 0, "threads": 3}), {"client-threads": 2}) == 3


def test_only_the_policy_and_a_client_set_torch_threads():
    """No stage changes the thread count mid-run: set_num_threads is called in two places only (the
    policy module, whose set_fixed_threads serves scripts/ship_pretrained.py, a tool outside bench run)."""
    callers = set()
    for folder in ("benchmark", "privacy", "attacks", "results", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in ("set_num_threads", "set_num_interop_threads"):
                    callers.add(str(path.relative_to(ROOT)))
    assert callers == {"benchmark/threads.py", "benchmark/federation/client_app.py"}


def test_bench_run_waits_passively_unless_the_user_chose():
    """`bench run` sets the policy before torch loads (Ray's actors inherit the environment)."""
    code = ("import os, sys; from benchmark import cli; rc = cli.main(['run', '--scenario', 'no-such-scenario']); "
            "print(rc, os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    assert out.stdout.split() == ["2", "PASSIVE", "False"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env | {"OMP_WAIT_POLICY": "ACTIVE"}, check=True, cwd=ROOT)
    assert out.stdout.split() == ["2", "ACTIVE", "False"]
