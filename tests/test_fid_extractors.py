"""FID extractors are one registry (benchmark.fid_extractors): scenario validation, ``bench fid --impl``
and the runner's pre-flight check read it, and it stays torch-free."""

import dataclasses
import importlib.metadata
import subprocess
import sys

import pytest

from benchmark import fid_extractors
from conftest import REPO  # noqa: I001


def test_impl_strings_name_package_version_network_and_resize():
    """What rows record as fid_impl: a changed string would split a leaderboard's FID column."""
    v = importlib.metadata.version
    assert fid_extractors.get_extractor("clean").impl == (
        f"clean-fid-{v('clean-fid')}:clean:inception-2015-12-05(torchscript):pil-bicubic-299")
    assert fid_extractors.get_extractor("pytorch-fid").impl == (
        f"pytorch-fid-{v('pytorch-fid')}:inception-2015-12-05(pt_inception-6726825d):torch-bilinear-299")
    with pytest.raises(ValueError, match="unknown FID extractor 'tf' \\(known: clean, pytorch-fid\\)"):
        fid_extractors.get_extractor("tf")


def test_a_new_extractor_is_one_registry_entry(monkeypatch, tmp_path):
    from benchmark.cli import build_parser
    from benchmark.inception import FIDUnavailableError
    from benchmark.runner import RunError, check_fid_available
    from benchmark.scenarios import Scenario, ScenarioError

    checked = []

    def check():
        checked.append("dino")
        raise FIDUnavailableError("dino weights missing\nsecond line")

    dino = dataclasses.replace(fid_extractors.EXTRACTORS["clean"], name="dino", summary="a test extractor",
                               check=check)
    monkeypatch.setitem(fid_extractors.EXTRACTORS, "dino", dino)
    scenario = Scenario(name="d", fid_impl="dino")
    assert build_parser().parse_args(["fid", "a", "b", "--impl", "dino"]).impl == "dino"
    with pytest.raises(RunError, match="^dino weights missing$"):
        check_fid_available([scenario])
    assert checked == ["dino"]
    monkeypatch.delitem(fid_extractors.EXTRACTORS, "dino")
    with pytest.raises(ScenarioError, match=r"unknown fid_impl 'dino' \(clean or pytorch-fid\)"):
        Scenario(name="d", fid_impl="dino")


def test_the_registry_imports_no_torch():
    code = ("import sys, benchmark.fid_extractors as f; [e.impl for e in f.EXTRACTORS.values()]; "
            "print(sorted(m for m in ('torch', 'cleanfid', 'pytorch_fid') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
