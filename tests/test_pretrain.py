"""Public pretraining (benchmark.pretrain): the checkpoint a federation starts from."""

import dataclasses
import json
import shutil

import pytest
import torch

from benchmark import pretrain
from benchmark.scenarios import Scenario

SCENARIO = Scenario(name="p", dataset="digits-embedded", pretrain="mnist8-embedded", pretrain_epochs=1,
                    class_conditional=True)


def test_checkpoint_is_trained_once_cached_by_definition_and_reproducible(tmp_path, monkeypatch):
    a = pretrain.pretrained_state(SCENARIO, (1, 8, 8), 10, cache_dir=tmp_path / "a")
    b = pretrain.pretrained_state(SCENARIO, (1, 8, 8), 10, cache_dir=tmp_path / "b")
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # fixed seed
    assert a.with_suffix(".json").exists()

    def no_training(*args, **kw):
        raise AssertionError("trained again")

    monkeypatch.setattr(pretrain, "train_public", no_training)
    assert pretrain.pretrained_state(SCENARIO, (1, 8, 8), 10, cache_dir=tmp_path / "a") == a
    # Another definition is another checkpoint (and would be trained).
    other = dataclasses.replace(SCENARIO, pretrain_epochs=2)
    assert pretrain.checkpoint_path(pretrain.definition(other, (1, 8, 8), 10), tmp_path / "a") != a
    # The checkpoint is the private model's architecture: it loads into it.
    from benchmark.federation import task
    from benchmark.data import load_dataset

    model = task.build_model(SCENARIO, load_dataset("digits-embedded"))
    model.load_state_dict(sa)


def test_pretraining_is_plain_training_with_its_own_seeds():
    """train_public is benchmark.model.train_epochs with the pretraining seeds: the same weights and
    last-epoch loss as the loop the cached checkpoints were trained by (written out here)."""
    import numpy as np

    from benchmark.data import load_dataset
    from benchmark.model import build_unet, diffusion_loss, make_scheduler, to_model_range
    from benchmark.seeding import derive_seed

    full = load_dataset("mnist8-embedded")
    public = dataclasses.replace(full, images=full.images[:150], labels=full.labels[:150])  # 2 full batches + 22
    scenario = dataclasses.replace(SCENARIO, pretrain_epochs=2)
    state, loss = pretrain.train_public(scenario, public)

    model = build_unet(scenario.model, in_channels=1, resolution=8, num_classes=10,
                       seed=derive_seed("pretrain-init", pretrain.PRETRAIN_SEED))
    sched = make_scheduler(scenario.num_train_timesteps)
    opt = torch.optim.Adam(model.parameters(), lr=pretrain.PRETRAIN_LEARNING_RATE)
    rng = np.random.default_rng(derive_seed("pretrain-batches", pretrain.PRETRAIN_SEED))
    gen = torch.Generator().manual_seed(derive_seed("pretrain-noise", pretrain.PRETRAIN_SEED))
    model.train()
    for _ in range(scenario.pretrain_epochs):
        loss_sum, steps = 0.0, 0
        order = rng.permutation(len(public.labels))
        for i in range(0, len(order), pretrain.PRETRAIN_BATCH_SIZE):
            idx = order[i:i + pretrain.PRETRAIN_BATCH_SIZE]
            y = torch.as_tensor(public.labels[idx])
            step_loss = diffusion_loss(model, sched, to_model_range(public.images[idx]), y, generator=gen)
            opt.zero_grad(set_to_none=True)
            step_loss.backward()
            opt.step()
            loss_sum += float(step_loss.detach())
            steps += 1
    expected = model.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert loss == loss_sum / steps


def test_public_data_of_another_shape_is_refused_in_one_line(tmp_path):
    mnist28 = dataclasses.replace(SCENARIO, dataset="mnist-embedded")
    with pytest.raises(pretrain.PretrainError, match=r"images \[1, 8, 8\], the private data \[1, 28, 28\]") as e:
        pretrain.pretrained_state(mnist28, (1, 28, 28), 10, cache_dir=tmp_path)
    assert "\n" not in str(e.value) and not (tmp_path / "pretrained").exists()


def test_mnist8_is_mnist_at_8px():
    from benchmark.data import load_dataset

    m8, m28 = load_dataset("mnist8-embedded"), load_dataset("mnist-embedded")
    assert m8.images.shape == (len(m28.labels), 1, 8, 8) and (m8.labels == m28.labels).all()
    assert m8.images.max() == 255 and m8.images.reshape(len(m8.labels), -1).max(1).min() == 255


@pytest.mark.slow
def test_public_only_row_is_the_checkpoint_and_its_attacks_are_a_null(tmp_path, monkeypatch):
    """rounds = 0: no federation, the released model is the public checkpoint bit for bit, and since no
    candidate was ever trained on, every membership attack is at chance (4 null std of 128 + 128)."""
    import json

    from benchmark.runner import RunOptions, run_one
    from benchmark.suites import get_scenario

    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))
    s = dataclasses.replace(get_scenario("privacy-public-only"), pretrain_epochs=1, fid_n_samples=16, seeds=(0,))
    run = run_one(s, 0, RunOptions(out_dir=tmp_path / "runs", progress=False))
    (ckpt,) = (tmp_path / "cache" / "pretrained").glob("*.pt")
    released, public = (torch.load(p, weights_only=True) for p in (run / "global_model.pt", ckpt))
    assert all(torch.equal(released[k], public[k]) for k in public)
    history = json.loads((run / "history.json").read_text())
    assert history["rounds"] == [] and history["train_s"] == 0.0
    mia = json.loads((run / "attacks.json").read_text())["mia"]
    assert set(mia) == {"mia-loss", "mia-secmi", "mia-pia"}
    for name, r in mia.items():
        assert r["n_members"] == r["n_nonmembers"] == 128 and abs(r["auc"] - 0.5) < 4 * 0.036, name


from benchmark.federation import task  # noqa: E402


def _shipped_definitions():
    """Every registered suite's cpu-scale pretraining definition, with a scenario that names it."""
    from benchmark.data import scenario_dataset
    from benchmark.suites import get_suite, suite_names

    out = {}
    for name in suite_names():
        for s in get_suite(name, "cpu"):
            if s.pretrain:
                d = scenario_dataset(s, "train")
                defn = pretrain.definition(s, d.images.shape[1:], d.num_classes)
                out.setdefault(pretrain.checkpoint_path(defn).name, (defn, s, d))
    return out


def test_every_registered_suites_checkpoint_ships_and_is_used_before_any_cache_or_training(tmp_path, monkeypatch):
    def no_training(*args, **kw):
        raise AssertionError("trained although the checkpoint ships")

    monkeypatch.setattr(pretrain, "train_public", no_training)
    shipped = _shipped_definitions()
    assert len(shipped) >= 2  # the privacy suite's and the cross-device suite's
    for name, (defn, s, d) in shipped.items():
        path = pretrain.pretrained_state(s, d.images.shape[1:], d.num_classes, cache_dir=tmp_path)
        assert path == pretrain.SHIPPED_DIR / name and not (tmp_path / "pretrained").exists()
        rec = json.loads(path.with_suffix(".json").read_text())
        assert {k: rec[k] for k in defn} == defn and rec["sha256"] == pretrain.sha256_file(path)
        # It is the private model's architecture: it loads into it.
        task.build_model(s, d).load_state_dict(torch.load(path, weights_only=True))


def test_a_damaged_or_mislabelled_shipped_checkpoint_is_refused_in_one_line(tmp_path):
    (name, (defn, _, _)), = list(_shipped_definitions().items())[:1]
    for f in (name, name.replace(".pt", ".json")):
        shutil.copy(pretrain.SHIPPED_DIR / f, tmp_path / f)
    assert pretrain.shipped_checkpoint(defn, tmp_path) == tmp_path / name
    assert pretrain.shipped_checkpoint(dict(defn, epochs=defn["epochs"] + 1), tmp_path) is None  # another name: absent
    data = bytearray((tmp_path / name).read_bytes())
    data[-100] ^= 1
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(pretrain.PretrainError, match="does not match its SHA-256") as e:
        pretrain.shipped_checkpoint(defn, tmp_path)
    assert "\n" not in str(e.value)
    rec = json.loads((tmp_path / name.replace(".pt", ".json")).read_text())
    (tmp_path / name.replace(".pt", ".json")).write_text(json.dumps(rec | {"epochs": 1}))
    with pytest.raises(pretrain.PretrainError, match="record's definition"):
        pretrain.shipped_checkpoint(defn, tmp_path)


@pytest.mark.slow
@pytest.mark.extended
def test_the_shipped_privacy_checkpoint_is_what_this_code_trains():
    """scripts/ship_pretrained.py --check: retrained with its recorded threads, bit for bit (about 2-3
    minutes on 2 cores)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "ship_pretrained.py"), "--check", "--only", "privacy"],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "same:" in r.stdout
