"""The README's cheap example commands run and exit 0 (README "Using it": bench list, --help,
compare, account, run --dry-run); the commands that train or need a GPU or data are left to
the slow tier and .ci/run."""

import re
import shlex
from pathlib import Path

import pytest

from benchmark.cli import main

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "results" / "privacy" / "leaderboard.csv"


def readme_commands() -> list[list[str]]:
    """Every ``bench ...`` line of the README's "Using it" block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Using it\n\n```bash\n(.*?)```", text, re.S).group(1)
    out = []
    for line in block.splitlines():
        cmd = re.split(r"\s+#", line, maxsplit=1)[0].strip()
        if cmd.startswith("bench "):
            out.append(shlex.split(cmd)[1:])
    return out


def cheap(argv: list[str]) -> bool:
    return argv[0] in ("list", "compare", "account") or (argv[0] == "run" and "--dry-run" in argv)


def runnable(argv: list[str]) -> list[str]:
    """``bench compare`` of a fresh run's leaderboard that this checkout has not made yet
    (results/local/...) compares the published one with itself instead."""
    if argv[0] != "compare":
        return argv
    return ["compare", *(a if (ROOT / a).exists() else str(PUBLISHED) for a in argv[1:] if not a.startswith("-"))]


def test_the_readme_lists_the_cheap_commands():
    cmds = readme_commands()
    assert {c[0] for c in cmds if cheap(c)} == {"list", "compare", "account", "run"}
    assert all(not c[0].startswith("-") for c in cmds)


LIGHT = [c for c in readme_commands() if cheap(c) and c[0] in ("list", "compare")] + [["--help"]]


@pytest.mark.parametrize("argv", LIGHT, ids=lambda a: " ".join(a[:2]))
def test_light_readme_commands_exit_zero(argv, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(runnable(argv)) == 0, capsys.readouterr()


@pytest.mark.slow  # imports torch, Opacus and Flower: seconds each on a loaded 2-core machine
@pytest.mark.parametrize("argv", [c for c in readme_commands() if cheap(c) and c[0] in ("account", "run")],
                         ids=lambda a: " ".join(a[:3]))
def test_readme_account_and_dry_run_exit_zero(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a dry run reads runs/ here: nothing complete, nothing written
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    if argv[0] == "run":
        assert "to run" in out.err and not (tmp_path / "runs").exists()
    else:
        assert out.out.startswith(("epsilon = ", "noise_multiplier = "))
