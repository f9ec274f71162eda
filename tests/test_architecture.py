"""The house rules that code review alone would not keep: no import cycles between our modules,
and light commands that stay light (no torch, no Flower before they need them)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO  # noqa: I001

PACKAGES = ("benchmark", "privacy", "attacks")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (annotations only, never imported)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere (top level or inside a function)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                # `from benchmark import rundir` names a module; `from benchmark.x import f` names x
                while t and t not in files:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != mod and not mod.startswith(t + "."):  # a package's own __init__ is not a cycle
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports():
    g = import_graph()
    assert "benchmark.rundir" in g["benchmark.runner"]      # a top-level import
    assert "benchmark.leaderboard" in g["benchmark.cli"]    # an import inside a function


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_our_modules():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


LIGHT = r"""
import json, sys
from benchmark.cli import main
out = {}
for argv in json.loads(sys.argv[1]):
    before = set(sys.modules)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    heavy = sorted(m for m in ("torch", "flwr", "diffusers", "opacus", "ray") if m in sys.modules)
    out[" ".join(argv)] = {"code": code, "heavy": heavy}
print(json.dumps(out))
"""


def test_light_commands_import_neither_torch_nor_flower(tmp_path, fake_run):
    from benchmark.scenarios import get_suite

    results, runs = tmp_path / "results", tmp_path / "runs"
    for scenario in get_suite("smoke"):
        fake_run(runs, scenario, 0)
    board = results / "smoke" / "leaderboard.csv"
    commands = [["--help"], ["list"], ["list", "--models"], ["run", "--suite", "no-such-suite"],
                ["summarize", str(runs), "--results", str(results)], ["compare", str(board), str(board)]]
    # Typos of the heavy commands answer (exit 2) before anything heavy loads.
    typos = [["list", "--suite", "privcy"], ["verify-dp", "--model", "unet-99"],
             ["perf", "--model", "unet-tiny", "--modes", "plain,nope"],
             ["partitions", "--scenario", "privcy-iid-nodp", "--seed", "0", "--out", str(tmp_path / "p")],
             ["sampler-cost", str(tmp_path / "no-run")], ["fid", str(tmp_path / "a"), str(tmp_path / "b")],
             ["account", "--level", "client", "--epsilon", "1", "--delta", "1e-5", "--steps", "5"]]
    commands += typos
    res = subprocess.run([sys.executable, "-c", LIGHT, json.dumps(commands)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert [v["code"] for v in got.values()] == [0, 0, 0, 2, 0, 0] + [2] * len(typos), got
    assert all(not v["heavy"] for v in got.values()), got


def test_a_new_dataset_is_one_registry_entry(monkeypatch):
    """A dataset is one entry of benchmark.data.DATASETS: scenarios, partitioning and the client
    data path pick it up without another edit."""
    import numpy as np

    from benchmark import data
    from benchmark.federation.task import load_federated_data
    from benchmark.scenarios import Scenario

    def load_stripes(root, split):
        rng = np.random.default_rng(0 if split == "train" else 1)
        labels = rng.integers(0, 2, 60).astype(np.int64)
        images = np.zeros((60, 1, 8, 8), np.uint8)
        images[labels == 1, :, ::2] = 255
        return data.ImageDataset("stripes", images, labels, 2)

    monkeypatch.setitem(data.DATASETS, "stripes", load_stripes)
    scenario = Scenario(name="stripes-iid", dataset="stripes", num_clients=3, clients_per_round=3)
    fed = load_federated_data(scenario, 0, None)
    assert fed.dataset.name == "stripes" and len(fed.partition.clients) == 3
    held = set(np.concatenate([c.heldout_idx for c in fed.partition.clients]).tolist())
    assert not held & set(fed.partition.members().tolist())
