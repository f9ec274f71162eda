"""bench perf: the report's shape and the CLI (never timed assertions: the numbers are measurements)."""

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_bench_perf_json_has_every_mode_with_ratio_to_plain(capsys):
    from benchmark.cli import main

    assert main(["perf", "--model", "unet-tiny", "--batch", "2", "--steps", "1", "--warmup", "0",
                 "--sample-steps", "1", "--sampler", "dpm-solver", "--fid-batch", "0", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    train = [r for r in rep["rows"] if r["what"] == "train"]
    assert [r["mode"] for r in train] == ["plain", "hooks", "ghost", "mixed-ghost", "mixed-ghost-bk"]
    assert all(r["img_per_s"] > 0 and r["median_s"] > 0 for r in train)
    assert [r["mode"] for r in rep["rows"] if r["what"] == "sample"] == ["dpm-solver-1"]
    assert rep["versions"]["opacus"] and rep["versions"]["diffusers"]


def test_bench_perf_refuses_unknown_mode(capsys):
    from benchmark.cli import main

    assert main(["perf", "--model", "unet-tiny", "--modes", "plain,fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--modes: unknown 'fast'" in err[0]  # refused by the parser, before torch loads


@pytest.mark.slow
@pytest.mark.extended  # minutes on 2 cores: `tox -e slow`, not .ci/run
def test_bench_perf_compiled_steps_run_and_say_so(capsys):
    from benchmark.cli import main

    assert main(["perf", "--model", "unet-tiny", "--batch", "2", "--steps", "1", "--warmup", "1", "--compile",
                 "--modes", "plain,mixed-ghost-bk", "--sample-steps", "0", "--fid-batch", "0", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["compiled"] is True
    assert [r["mode"] for r in rep["rows"]] == ["plain", "mixed-ghost-bk"]


def test_bench_perf_compile_needs_a_warmup(capsys):
    from benchmark.cli import main

    assert main(["perf", "--model", "unet-tiny", "--compile", "--warmup", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warm-up" in err[0]


def test_tf32_flags_are_restored_after_timing_even_on_error():
    """The TF32 flags are process-wide: timing with them on must leave the caller's settings as they
    were (setting them needs no GPU, so this runs anywhere)."""
    import torch

    from benchmark.perf import tf32_matmuls

    flags = lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)  # noqa: E731
    before = flags()
    for enabled in (True, False):
        with tf32_matmuls("cuda", enabled):
            assert flags() == (enabled, enabled)
        assert flags() == before
    with pytest.raises(RuntimeError, match="boom"), tf32_matmuls("cuda:0", not before[0]):
        raise RuntimeError("boom")
    assert flags() == before
    with tf32_matmuls("cpu", not before[0]):  # a CPU run leaves them alone
        assert flags() == before
