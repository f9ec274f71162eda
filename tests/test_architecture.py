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


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere (top level, inside a function, or under
    ``if TYPE_CHECKING:``: an annotation-only import is still a loop a reader must follow)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
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
    assert "attacks.base" in g["attacks.registry"]          # an import under TYPE_CHECKING


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
    from benchmark.suites import get_suite

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
    from benchmark.federation.partition_files import load_federated_data
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


# ------------------------------------------------------------------ a DP mechanism is one object
DP_FLAGS = {"clients_run_dpsgd", "server_adds_noise", "client_sampling", "image_sensitivity"}


def dp_mode_branches(source: str, names, plain: str) -> list[str]:
    """What in ``source`` reads a DP mechanism's flags or branches on a mechanism's name: a flag
    read, a comparison with a name (``==``, ``in`` a literal), a dict or ``match`` keyed by one.
    ``plain``, the non-private mechanism's name, is an ordinary word ("none"): it counts only in a
    comparison whose other side names a mode."""
    def named(node, strict=True) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names and (node.value != plain or not strict)
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(named(e, strict) for e in node.elts)

    def compares_a_mode(node: ast.Compare) -> bool:
        sides = (node.left, *node.comparators)
        return any(named(n) for n in sides) or (
            any(named(n, strict=False) for n in sides) and "mode" in ast.unparse(node))

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in DP_FLAGS or isinstance(node, ast.Name) and node.id in DP_FLAGS:
            found.append(f"line {node.lineno}: reads {ast.unparse(node)}")
        elif isinstance(node, ast.Compare) and compares_a_mode(node):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Dict) and any(k is not None and named(k) for k in node.keys):
            found.append(f"line {node.lineno}: a dict keyed by a DP mode")
        elif isinstance(node, ast.match_case) and any(named(p.value) for p in ast.walk(node.pattern)
                                                      if isinstance(p, ast.MatchValue)):
            found.append(f"line {node.pattern.lineno}: case {ast.unparse(node.pattern)}")
    return found


def test_the_branch_finder_finds_branches():
    names = {"local-dpsgd", "central-dp"}
    planted = ("if mode.clients_run_dpsgd:\n    pass\n"
               "x = s.dp_mode == 'central-dp'\n"
               "y = s.dp_mode in ('none', 'local-dpsgd')\n"
               "z = {'central-dp': 1}[s.dp_mode]\n"
               "match s.dp_mode:\n    case 'local-dpsgd':\n        pass\n")
    assert sorted(f.split(":")[0] for f in dp_mode_branches(planted, names | {"none"}, "none")) == [
        f"line {i}" for i in (1, 3, 4, 5, 7)]
    # The non-private mechanism's name is an ordinary word: only compared with a mode it is a branch.
    assert dp_mode_branches("r = reduction == 'none'", names | {"none"}, "none") == []
    assert len(dp_mode_branches("r = s.dp_mode != 'none'", names | {"none"}, "none")) == 1
    # Declaring a scenario of a mechanism is not a branch.
    assert dp_mode_branches("Scenario(name='a', dp_mode='local-dpsgd')\nm = get_mechanism(s.dp_mode)", names, "none") == []


def test_nothing_outside_privacy_reads_a_mechanisms_flags_or_branches_on_its_name():
    """What a DP mode does lives in its mechanism (privacy/mechanisms): everything else asks it."""
    from privacy.mechanisms import NO_DP, mechanism_names

    names = set(mechanism_names())
    found = {}
    for pkg in ("benchmark", "attacks", "scripts"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            hits = dp_mode_branches(path.read_text(), names, NO_DP.name)
            if hits:
                found[str(path.relative_to(REPO))] = hits
    assert not found, found
