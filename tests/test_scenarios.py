import ast
import dataclasses
from pathlib import Path

import pytest

from benchmark.scales import SCALES
from benchmark.scenarios import Scenario, ScenarioError, load_scenario_file
from benchmark.suites import SUITES, get_scenario, get_suite, register_suite


def test_smoke_suite_names_stable_across_scales_hashes_not():
    cpu, gpu = get_suite("smoke", "cpu"), get_suite("smoke", "gpu")
    assert [s.name for s in cpu] == [s.name for s in gpu] == ["smoke-iid", "smoke-dirichlet-0.5"]
    assert {s.scale for s in cpu} == {"cpu"} and {s.scale for s in gpu} == {"gpu"}
    assert all(a.hash != b.hash for a, b in zip(cpu, gpu))


def test_hash_covers_definition_not_seeds():
    s = get_scenario("smoke-iid")
    assert dataclasses.replace(s, seeds=(4, 5)).hash == s.hash
    assert dataclasses.replace(s, rounds=s.rounds + 1).hash != s.hash
    assert dataclasses.replace(s, partition="dirichlet-0.1").hash != s.hash


def test_seed_paper_grid():
    scenarios = get_suite("seed-paper", "gpu")
    assert len(scenarios) == 4 * 3 * 3 * 3
    assert {s.partition for s in scenarios} == {"dirichlet-0.1", "dirichlet-0.5", "dirichlet-5"}
    assert {s.num_clients for s in scenarios} == {10, 30, 50}
    assert {s.local_epochs for s in scenarios} == {1, 5, 10}
    assert {s.clients_per_round for s in scenarios} == {10}
    assert {s.model for s in scenarios if s.dataset == "cifar10"} == {"unet-32"}


def test_registry_refuses_duplicates_and_unknowns():
    with pytest.raises(ValueError, match="twice"):
        register_suite("smoke")(lambda scale: ())
    with pytest.raises(ScenarioError, match="unknown suite 'nope'"):
        get_suite("nope")
    with pytest.raises(ScenarioError, match="unknown scale"):
        get_suite("smoke", "tpu")
    with pytest.raises(ScenarioError, match="unknown scenario"):
        get_scenario("nope")
    assert "smoke" in SUITES and set(SCALES) == {"cpu", "gpu"}


def test_scenario_json_roundtrip():
    s = get_scenario("smoke-dirichlet-0.5")
    assert Scenario.from_json(s.to_json()) == s


def write(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def test_toml_single_and_many(tmp_path):
    (one,) = load_scenario_file(write(tmp_path, 'name = "a"\nrounds = 3\nseeds = [1, 2]\n'))
    assert one.rounds == 3 and one.seeds == (1, 2)
    many = load_scenario_file(write(tmp_path, '[[scenario]]\nname = "a"\n[[scenario]]\nname = "b"\n'
                                              'partition = "dirichlet-0.1"\n'))
    assert [s.name for s in many] == ["a", "b"]


@pytest.mark.parametrize("body, match", [
    ('name = "a"\nnum_clientz = 3\n', "unknown field.*num_clientz"),
    ('name = "a"\nnum_clients = "4"\n', "field 'num_clients' must be int"),
    ('name = "a"\nclass_conditional = 1\n', "field 'class_conditional' must be bool"),
    ('name = "a"\nrounds = 2.5\n', "field 'rounds' must be int"),
    ('name = "a"\ndp_mode = "local-dpsgd"\ntarget_epsilon = 0\ndelta = 1e-5\n', "target_epsilon > 0"),
    ('name = "a"\ndp_mode = "central-dp"\ntarget_epsilon = -1.0\ndelta = 1e-5\n', "target_epsilon > 0"),
    ('name = "a"\ndp_mode = "local-dpsgd"\ntarget_epsilon = 1\ndelta = 1.5\n', "delta in"),
    ('name = "a"\nnum_clients = 2\nclients_per_round = 3\n', "clients_per_round"),
    ('name = "a"\npartition = "dirichlet-0"\n', "alpha"),
    ('name = "a"\npartition = "dirichlet--1"\n', "alpha|dirichlet"),
    ('name = "a"\ndataset = "imagenet"\n', "unknown dataset"),
    ('name = "a"\nmodel = "unet-huge"\n', "unknown model"),
    ('name = "a"\nattacks = ["mia-magic"]\n', "unknown attack"),
    ('rounds = 2\n', "missing required field 'name'"),
    ('name = "a"\nrounds = \n', "invalid TOML"),
])
def test_toml_refusals_are_one_line(tmp_path, body, match):
    with pytest.raises(ScenarioError, match=match) as err:
        load_scenario_file(write(tmp_path, body))
    assert "\n" not in str(err.value)


def test_missing_scenario_file(tmp_path):
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario_file(tmp_path / "nope.toml")


def test_regression_suite_is_a_resized_grid_subset():
    for scale, n, seeds in (("cpu", 2, (0,)), ("gpu", 4, (0, 1))):
        reg = get_suite("regression", scale)
        grid = {s.name: s for s in get_suite("privacy-grid", scale)}
        assert len(reg) == n and all(s.suite == "regression" and s.seeds == seeds for s in reg)
        for s in reg:
            p = grid[s.name.replace("regression-", "grid-")]
            assert (s.dp_mode, s.target_epsilon, s.partition, s.model, s.num_clients) == \
                (p.dp_mode, p.target_epsilon, p.partition, p.model, p.num_clients)
            assert s.rounds < p.rounds and s.hash != p.hash


def test_mixed_ghost_modes_and_dpm_solver():
    dp = dict(dp_mode="local-dpsgd", target_epsilon=4.0, delta=1e-5)
    for mode in ("mixed-ghost", "mixed-ghost-bk"):
        assert Scenario(name="s", grad_sample_mode=mode, **dp).grad_sample_mode == mode
    with pytest.raises(ScenarioError, match="unknown grad_sample_mode 'fast'.*mixed-ghost-bk"):
        Scenario(name="s", grad_sample_mode="fast", **dp)
    assert Scenario(name="s", sampler="dpm-solver").sampler == "dpm-solver"
    # The defaults (and so the published scenario hashes) are unchanged.
    assert Scenario(name="s").grad_sample_mode == "hooks" and Scenario(name="s").sampler == "ddim"


@pytest.mark.parametrize("fields, match", [
    (dict(pretrain="nope", pretrain_epochs=1), "unknown pretrain dataset 'nope'"),
    (dict(pretrain="digits-embedded", pretrain_epochs=1), "names the private dataset"),
    (dict(pretrain="mnist8-embedded"), "pretrain_epochs must be >= 1"),
    (dict(pretrain_epochs=3), "pretrain names no public dataset"),
    (dict(rounds=0), "0 only for a public-only row"),
    (dict(rounds=0, pretrain="mnist8-embedded", pretrain_epochs=1, dp_mode="local-dpsgd", target_epsilon=1.0,
          delta=1e-5), "dp_mode must be 'none'"),
    (dict(rounds=0, pretrain="mnist8-embedded", pretrain_epochs=1, attacks=("mia-loss", "inversion")),
     "no client update to attack: drop inversion"),
    (dict(rounds=-1), "rounds must be >= 1"),
])
def test_pretraining_fields_are_checked(fields, match):
    with pytest.raises(ScenarioError, match=match):
        Scenario(name="s", dataset="digits-embedded", **fields)


def test_cpu_privacy_suite_is_the_memorisation_regime_with_its_public_reference():
    """The suite's design: one public checkpoint for every row, a public-only
    reference, no DP and local DP at 10 / 4 / 1 with DP-SGD's own budget, two seeds, every attack."""
    import pandas as pd

    from benchmark.suites import ATTACKS

    suite = {s.name: s for s in get_suite("privacy", "cpu")}
    assert list(suite) == ["privacy-public-only", "privacy-iid-nodp", "privacy-iid-local-eps10",
                           "privacy-iid-local-eps4", "privacy-iid-local-eps1"]
    assert {(s.pretrain, s.pretrain_epochs, s.dataset, s.seeds) for s in suite.values()} == \
        {("mnist8-embedded", 30, "digits-embedded", (0, 1, 2))}
    # The suite is the one published: every scenario's definition hash as in results/privacy/.
    from conftest import REPO

    published = pd.read_csv(REPO / "results" / "privacy" / "leaderboard.csv")
    assert dict(zip(published.scenario, published.scenario_hash)) == {n: s.hash for n, s in suite.items()}
    public = suite["privacy-public-only"]
    assert public.rounds == 0 and "inversion" not in public.attacks and public.dp_mode == "none"
    assert suite["privacy-iid-nodp"].attacks == ATTACKS and suite["privacy-iid-nodp"].rounds == 20
    for eps in (10.0, 4.0, 1.0):
        s = suite[f"privacy-iid-local-eps{eps:g}"]
        assert (s.target_epsilon, s.dp_mode, s.local_epochs, s.batch_size) == (eps, "local-dpsgd", 10, 32)
    # The grid keeps its own names and (but for the name) the old privacy suite's definitions.
    grid = get_suite("privacy-grid", "cpu")
    assert len(grid) == 14 and all(s.name.startswith("grid-") and s.pretrain is None for s in grid)


def test_seed_paper_embedded_suite_is_the_papers_grid_on_embedded_data():
    for scale in ("cpu", "gpu"):
        suite = get_suite("seed-paper-embedded", scale)
        assert sorted((s.partition, s.num_clients) for s in suite) == sorted(
            (f"dirichlet-{b}", n) for b in ("0.1", "0.5", "5") for n in (10, 30, 50))
        assert {(s.dp_mode, s.clients_per_round, s.local_epochs, s.rounds) for s in suite} == \
            {("none", 10, suite[0].local_epochs, suite[0].rounds)}  # fixed E and rounds, no DP
        assert {s.dataset for s in suite} <= {"digits-embedded", "mnist-embedded"}


# ---------------------------------------------------------------- a scale is its fields, not its name
def scale_name_reads(source: str, scale_names) -> list[str]:
    """Where ``source`` tells scales apart by name, inside a function that takes a ``Scale``: a read
    of the scale's ``name`` other than recording it (``scale=scale.name``), or a scale's name as a
    literal (docstrings aside)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    docstrings = {n.body[0].value for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        scales = {a.arg for a in fn.args.args + fn.args.kwonlyargs
                  if a.annotation is not None and ast.unparse(a.annotation).strip("'\"").endswith("Scale")}
        if not scales:
            continue
        for node in ast.walk(fn):
            if (isinstance(node, ast.Attribute) and node.attr == "name" and isinstance(node.value, ast.Name)
                    and node.value.id in scales):
                parent = parents[node]
                if not (isinstance(parent, ast.keyword) and parent.arg == "scale"):
                    found.append(f"line {node.lineno}: reads {ast.unparse(node)}")
            elif isinstance(node, ast.Constant) and node.value in scale_names and node not in docstrings:
                found.append(f"line {node.lineno}: the scale name {node.value!r}")
    return found


def test_the_scale_name_finder_finds_reads():
    planted = ('def a(scale: Scale):\n'
               '    """At the cpu scale: a docstring may name it."""\n'
               '    return dict(scale=scale.name)\n'
               'def b(scale: Scale):\n'
               '    if scale.name != "cpu":\n'
               '        return ()\n'
               'def c(sc: "Scale"):\n'
               '    return {"gpu": 1}.get(sc.name)\n'
               'def d(scale: Scale, suite: str):\n'
               '    return _grid(scale.name, suite)\n'
               'def e(name: str):\n'
               '    return name == "cpu"\n')
    assert sorted(scale_name_reads(planted, SCALES)) == sorted([
        "line 5: reads scale.name", "line 5: the scale name 'cpu'", "line 8: reads sc.name",
        "line 8: the scale name 'gpu'", "line 10: reads scale.name"])


def test_no_suite_tells_scales_apart_by_name():
    """What differs between scales is a field of the Scale; a suite only records its name."""
    import inspect

    from benchmark import suites

    found = scale_name_reads(inspect.getsource(suites), SCALES)
    assert not found, found


@pytest.mark.parametrize("like", ["cpu", "gpu"])
def test_a_new_scale_is_one_entry(monkeypatch, like):
    """A scale registered as one entry (here a copy of ``like``) yields every suite, each scenario
    as at ``like`` but for the scale's name (the attack budget included)."""
    twin = dataclasses.replace(SCALES[like], name="twin")
    monkeypatch.setitem(SCALES, "twin", twin)
    for suite in SUITES:
        want, got = get_suite(suite, like), get_suite(suite, "twin")
        assert {s.scale for s in got} <= {"twin"}
        assert [dataclasses.replace(s, scale=like) for s in got] == list(want), suite
        assert [s.definition() | {"scale": like} for s in got] == [s.definition() for s in want], suite


@pytest.mark.parametrize("field, value, match", [
    ("sampler", "euler", r"scenario 's': unknown sampler 'euler' \(known: ddim, ddpm, dpm-solver\)$"),
    ("optimizer", "adamw", r"scenario 's': unknown optimizer 'adamw' \(known: adam, sgd\)$"),
])
def test_an_unknown_sampler_or_optimizer_is_refused_in_one_line(field, value, match):
    with pytest.raises(ScenarioError, match=match) as err:
        Scenario(name="s", **{field: value})
    assert "\n" not in str(err.value)


def test_the_sampler_and_optimizer_registries_are_torch_free():
    import subprocess
    import sys

    code = ("import sys; from benchmark.scenarios import Scenario; "
            "Scenario(name='s', sampler='dpm-solver', optimizer='sgd'); "
            "sys.exit(bool({'torch', 'diffusers'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "validation imported torch or diffusers"


@pytest.mark.parametrize("board", sorted(p.parent.name for p in (Path(__file__).resolve().parents[1] / "results")
                                         .glob("*/leaderboard.csv") if p.parent.name != "local"))
def test_every_published_board_is_its_suites_current_definition(board):
    """A published leaderboard is stale once its suite's definitions change: every row's scenario
    hash must be the suite's (at the board's scale), and every scenario of the suite must have a row."""
    import pandas as pd

    from conftest import REPO

    published = pd.read_csv(REPO / "results" / board / "leaderboard.csv")
    (scale,) = set(published.scale)
    suite = {s.name: s.hash for s in get_suite(str(published.suite.iloc[0]), scale)}
    assert dict(zip(published.scenario, published.scenario_hash)) == suite
