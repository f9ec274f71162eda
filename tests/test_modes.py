"""privacy.mechanisms and privacy.modes: the DP-mechanism and grad-sample-mode registries, and the
one construction path (privacy.dpsgd.make_dp_step) that training, verify-dp and perf share."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from privacy import mechanisms, modes
from privacy.mechanisms import get_mechanism, mechanism_names
from privacy.modes import GradSampleMode, ModeError, get_grad_sample_mode, grad_sample_mode_names, registered

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ------------------------------------------------------------------------------------ registry
def test_registry_holds_the_published_modes():
    assert mechanism_names() == ("none", "local-dpsgd", "central-dp", "central-dp-sampled", "central-dp-ftrl")
    assert grad_sample_mode_names() == ("hooks", "ghost", "mixed-ghost", "mixed-ghost-bk")
    none, local, central, sampled, ftrl = (get_mechanism(n) for n in mechanism_names())
    assert (none.dp_level, local.dp_level, central.dp_level, sampled.dp_level, ftrl.dp_level) == \
        ("", "sample", "client", "client", "client")
    assert not none.private and local.private and central.private
    assert local.accountants == ("rdp", "prv") and central.accountants == ("rdp",)
    assert (none.weight_key, local.weight_key, central.weight_key) == ("num-examples", "num-examples", "dp-weight")
    assert (local.expected_weight(12), central.expected_weight(12)) == (12.0, 1.0)
    # The published defaults: per-sample clip 1.0 (local), per-update clip 0.5 (central).
    assert local.clip(None) == 1.0 and local.clip(2.5) == 2.5 and none.clip(None) is None
    assert central.clip(None) == sampled.clip(None) == ftrl.clip(None) == 0.5
    assert [n for n in grad_sample_mode_names() if get_grad_sample_mode(n).supports_noise_multiplicity] == ["hooks"]
    assert [n for n in grad_sample_mode_names() if not get_grad_sample_mode(n).ghost_family] == ["hooks"]


def test_registry_refuses_duplicates():
    hooks = get_grad_sample_mode("hooks")
    with pytest.raises(ModeError, match="'hooks' is already registered"):
        modes.register_grad_sample_mode(hooks)
    with pytest.raises(ModeError, match="'central-dp' is already registered"):
        mechanisms.register_mechanism(get_mechanism("central-dp"))
    with registered(GradSampleMode("hooks-2", "alias", ghost_family=False, supports_noise_multiplicity=True,
                                   wrap=hooks.wrap)):
        with pytest.raises(ModeError, match="already registered"), registered(get_grad_sample_mode("hooks-2")):
            pass
        assert "hooks-2" in grad_sample_mode_names()  # the failed second registration removed nothing
    assert grad_sample_mode_names() == ("hooks", "ghost", "mixed-ghost", "mixed-ghost-bk")


@pytest.mark.parametrize("lookup, name, known", [
    (get_mechanism, "local", "none, local-dpsgd, central-dp, central-dp-sampled, central-dp-ftrl"),
    (get_grad_sample_mode, "fast", "hooks, ghost, mixed-ghost, mixed-ghost-bk"),
])
def test_unknown_mode_is_a_one_line_error_listing_the_known_names(lookup, name, known):
    with pytest.raises(ModeError) as e:
        lookup(name)
    assert "\n" not in str(e.value) and repr(name) in str(e.value) and f"(known: {known})" in str(e.value)


def test_modes_import_neither_torch_opacus_nor_flwr():
    code = ("import sys, privacy.modes, privacy.mechanisms, privacy; "
            "print(sorted(m for m in ('torch', 'opacus', 'flwr', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_scenario_validation_reads_the_registry():
    from benchmark.scenarios import Scenario, ScenarioError

    dp = dict(target_epsilon=4.0, delta=1e-5)
    with pytest.raises(ScenarioError, match=r"accountant 'prv' not available for central-dp \(known: rdp\)"):
        Scenario(name="s", dp_mode="central-dp", accountant="prv", **dp)
    assert Scenario(name="s", dp_mode="local-dpsgd", accountant="prv", **dp).accountant == "prv"
    with pytest.raises(ScenarioError, match="> 1 only with grad_sample_mode 'hooks'"):
        Scenario(name="s", dp_mode="local-dpsgd", grad_sample_mode="ghost", noise_multiplicity=2, **dp)
    with pytest.raises(ScenarioError, match="unknown dp_mode 'local'"):
        Scenario(name="s", dp_mode="local", **dp)
    with registered(GradSampleMode("hooks-2", "alias", ghost_family=False, supports_noise_multiplicity=True,
                                   wrap=get_grad_sample_mode("hooks").wrap)):
        assert Scenario(name="s", dp_mode="local-dpsgd", grad_sample_mode="hooks-2", noise_multiplicity=2,
                        **dp).grad_sample_mode == "hooks-2"
    with pytest.raises(ScenarioError, match="unknown grad_sample_mode 'hooks-2'"):
        Scenario(name="s", dp_mode="local-dpsgd", grad_sample_mode="hooks-2", **dp)


# ---------------------------------------------------- a new grad-sample mode, end to end (no other file)
def _mixed_bk_alias(model, *, max_grad_norm):
    from privacy.mixed_ghost import MixedGhostGradSampleModule

    return MixedGhostGradSampleModule(model, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm,
                                      book_keeping=True)


NEW_MODES = [
    GradSampleMode("hooks-alias", "hooks under another name", ghost_family=False, supports_noise_multiplicity=True,
                   wrap=lambda model, *, max_grad_norm: get_grad_sample_mode("hooks").wrap(model,
                                                                                          max_grad_norm=max_grad_norm)),
    GradSampleMode("bk-alias", "book-keeping under another name", ghost_family=True,
                   supports_noise_multiplicity=False, wrap=_mixed_bk_alias),
]


@pytest.mark.parametrize("mode", NEW_MODES, ids=lambda m: m.name)
def test_a_registered_grad_sample_mode_is_verified_timed_and_offered_by_the_cli(mode):
    from benchmark.cli import build_parser
    from benchmark.perf import make_train_step
    from benchmark.model import build_unet
    from privacy.verify import verify_dp

    with registered(mode):
        report = verify_dp("unet-tiny", batch_size=2, modes=(mode.name,), in_channels=1, resolution=8)
        assert report.passed, report.table()
        rep = report.modes[0]
        assert rep.mode == mode.name and rep.norm_rel_err < 1e-4 and rep.max_contribution_over_clip <= 1 + 1e-4
        assert (rep.grad_rel_err is None) == mode.ghost_family  # per-sample gradients checked where they exist
        model = build_unet("unet-tiny", in_channels=1, resolution=8, seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        step, close = make_train_step(model, mode.name, batch=2, device="cpu")
        step()
        close()
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert mode.name in build_parser().parse_args(["verify-dp", "--model", "unet-tiny"]).modes.split(",")
        assert mode.name in build_parser().parse_args(["perf", "--model", "unet-tiny"]).modes.split(",")
    assert mode.name not in grad_sample_mode_names()
    with pytest.raises(ValueError, match=f"unknown DP mode.*{mode.name}"):
        verify_dp("unet-tiny", batch_size=2, modes=(mode.name,))


# ----------------------------------------------- one construction path for training, verify-dp and perf
@pytest.fixture
def construction_calls(monkeypatch):
    from privacy import dpsgd

    calls, real = [], dpsgd.make_dp_step

    def spy(*args, **kwargs):
        calls.append(kwargs["grad_sample_mode"])
        return real(*args, **kwargs)

    monkeypatch.setattr(dpsgd, "make_dp_step", spy)
    return calls


def test_training_builds_its_dp_step_through_make_dp_step(construction_calls):
    from benchmark.model import build_unet
    from privacy.dpsgd import LocalDPPlan, dp_train_epochs

    plan = LocalDPPlan(noise_multiplier=1.0, sample_rate=0.5, max_grad_norm=1.0, steps_per_epoch=2, max_steps=2,
                       target_epsilon=8.0, delta=1e-3, accountant="rdp", grad_sample_mode="mixed-ghost-bk",
                       noise_multiplicity=1)
    model = build_unet("unet-tiny", in_channels=1, resolution=8, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    stats = dp_train_epochs(model, torch.optim.SGD(model.parameters(), lr=0.1), plan, images, np.zeros(4, np.int64),
                            epochs=1, num_train_timesteps=100, conditional=False, device="cpu", seed=0,
                            accountant_history=[])
    assert construction_calls == ["mixed-ghost-bk"] and stats["steps"] == 2 and stats["epsilon"] > 0


def test_verify_dp_builds_every_mode_through_make_dp_step(construction_calls):
    from privacy.verify import verify_dp

    report = verify_dp("unet-tiny", batch_size=2, modes=("hooks", "ghost"), in_channels=1, resolution=8)
    assert report.passed and construction_calls == ["hooks", "ghost"]


def test_perf_builds_every_dp_mode_through_make_dp_step(construction_calls):
    from benchmark.perf import run_perf

    report = run_perf("unet-tiny", batch=2, modes=("plain", "mixed-ghost"), steps=1, warmup=0,
                      sample_steps=0, fid_batch=0)
    assert [r.mode for r in report.rows] == ["plain", "mixed-ghost"]
    assert construction_calls == ["mixed-ghost"]  # plain is no DP step


def test_noise_multiplicity_is_refused_where_there_are_no_per_sample_gradients():
    from privacy.dpsgd import make_dp_step, plan_local_dp

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    dp = make_dp_step(model, torch.optim.SGD(model.parameters(), lr=0.1), grad_sample_mode="ghost",
                      max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=4)
    per_loss = dp.module(torch.randn(4, 3)).pow(2).mean(1)
    with pytest.raises(ModeError, match="needs grad_sample_mode 'hooks'"):
        dp.backward(per_loss, multiplicity=2)
    dp.close()
    with pytest.raises(ModeError, match="needs grad_sample_mode 'hooks'.*not 'mixed-ghost'"):
        plan_local_dp(n_train=8, batch_size=4, rounds=1, local_epochs=1, target_epsilon=4.0, delta=1e-5, max_grad_norm=1.0,
                      grad_sample_mode="mixed-ghost", noise_multiplicity=2)


# ------------------------------------------- what reads the DP-mode registry: privacy columns, attacker's view
def _scenarios():
    from benchmark.scenarios import Scenario

    dp = dict(target_epsilon=4.0, delta=1e-5)
    return (Scenario(name="n"), Scenario(name="l", dp_mode="local-dpsgd", **dp),
            Scenario(name="c", dp_mode="central-dp", max_grad_norm=0.25, **dp),
            Scenario(name="cc", dp_mode="central-dp", central_clipping="client", **dp))


def test_runner_privacy_columns_follow_the_dp_mode():
    from benchmark.runner import privacy_metrics

    none, local, central, _ = _scenarios()
    assert privacy_metrics(none, {"privacy": {"mechanism": "none"}}) == {
        "epsilon": None, "delta": None, "accountant": None, "noise_multiplier": None, "max_grad_norm": None,
        "sample_rate": None}
    rounds = [{"epsilon": 1.5, "noise_multiplier": 2.0, "sample_rate": 0.1},
              {"epsilon": 3.5, "noise_multiplier": 1.5, "sample_rate": 0.2}]
    # The server's figures (history.json's privacy record), not the clients' reports in the rounds.
    local_dp = {"epsilon": 2.5, "noise_multiplier": 1.75, "sample_rate": 0.15, "accountant": "opacus-rdp",
                "max_grad_norm": 1.0}
    cols = privacy_metrics(local, {"rounds": rounds, "privacy": local_dp})
    assert (cols["epsilon"], cols["noise_multiplier"], cols["sample_rate"]) == (2.5, 1.75, 0.15)
    assert cols["max_grad_norm"] == 1.0 and cols["accountant"] == "opacus-rdp" and cols["grad_sample_mode"] == "hooks"
    central_dp = {"epsilon": 3.9, "accountant": "flwr-rdp-no-amplification", "noise_multiplier": 7.0,
                  "max_grad_norm": 0.25, "sample_rate": 0.5}
    cols = privacy_metrics(central, {"privacy": central_dp, "rounds": rounds})
    assert cols["epsilon"] == 3.9 and cols["accountant"] == "flwr-rdp-no-amplification" and cols["delta"] == 1e-5
    assert "grad_sample_mode" not in cols


def test_attackers_view_of_an_update_follows_the_dp_mode():
    from attacks.evaluate import observed_dp

    none, local, central, client_clipped = _scenarios()
    priv = {"max_grad_norm": 0.5, "noise_multiplier": 1.25}
    assert observed_dp(none, {}) == {"clip": None, "noise_multiplier": 0.0}
    assert observed_dp(local, priv) == {"clip": 0.5, "noise_multiplier": 1.25}  # clients clip and noise
    assert observed_dp(central, priv) == {"clip": None, "noise_multiplier": 0.0}  # the server clips, after the wire
    assert observed_dp(client_clipped, priv) == {"clip": 0.5, "noise_multiplier": 0.0, "clip_whole_update": True}


@pytest.mark.parametrize("mode", ["hooks", "mixed-ghost-bk"])  # one of each family
def test_an_empty_poisson_batch_is_a_charged_noise_only_step(mode, monkeypatch):
    from benchmark.model import build_unet
    from privacy import dpsgd

    empty, real = [], dpsgd.DPStep.empty_batch
    monkeypatch.setattr(dpsgd.DPStep, "empty_batch", lambda self: (empty.append(self.mode.name), real(self)))
    plan = dpsgd.LocalDPPlan(noise_multiplier=1.0, sample_rate=0.5, max_grad_norm=1.0, steps_per_epoch=2,
                             max_steps=2, target_epsilon=8.0, delta=1e-3, accountant="rdp", grad_sample_mode=mode,
                             noise_multiplicity=1)
    model = build_unet("unet-tiny", in_channels=1, resolution=8, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (2, 1, 8, 8), dtype=np.uint8)
    stats = dpsgd.dp_train_epochs(model, torch.optim.SGD(model.parameters(), lr=0.1), plan, images,
                                  np.zeros(2, np.int64), epochs=1, num_train_timesteps=100, conditional=False,
                                  device="cpu", seed=2, accountant_history=[],
                                  sampling_generator=torch.Generator().manual_seed(2))  # one of two batches is empty
    assert empty == [mode] and stats["steps"] == 2
    assert stats["history"] == [(1.0, 0.5, 2)]  # the empty step is charged like any other
    assert all(torch.isfinite(p).all() for p in model.parameters())
