"""Checks that need a CUDA device (`tox -e gpu`, or scripts/gpu_checks.sh on a lent GPU).

On the GPU the per-sample gradients come from other kernels (cuDNN convolutions, TF32 where
enabled), so the CPU verification does not carry over: every grad-sample mode is verified again
on every model config, and the training path (a DP step through the construction training uses)
must run there.
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.mark.parametrize("model", ["unet-tiny", "unet-28", "unet-32"])
def test_every_grad_sample_mode_matches_the_per_sample_loop_on_cuda(model):
    from privacy.verify import verify_dp

    report = verify_dp(model, device="cuda", batch_size=4)
    assert report.passed, report.table()
    for m in report.modes:
        assert m.norm_rel_err < 1e-4 and m.max_contribution_over_clip <= 1 + 1e-4, report.table()


def test_bench_perf_runs_every_mode_on_cuda(capsys):
    import json

    from benchmark.cli import main

    assert main(["perf", "--model", "unet-tiny", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                 "--device", "cuda", "--sample-steps", "1", "--fid-batch", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    train = [r for r in rows if r["what"] == "train"]
    assert len(train) >= 2 and all(r["peak_gib"] and r["peak_gib"] > 0 for r in train)
