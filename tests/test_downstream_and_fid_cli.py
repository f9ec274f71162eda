"""`bench fid` on folders and arrays, and the downstream-accuracy metric."""

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.data import load_dataset
from benchmark.downstream import downstream_accuracy
from benchmark.images import ImageLoadError, load_images


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist-embedded"), load_dataset("mnist-embedded", split="test")


def test_load_images_folder_npz_npy(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)  # NHWC RGB
    (tmp_path / "dir").mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / "dir" / f"{i:02d}.png")
    np.savez(tmp_path / "a.npz", images=imgs)
    np.save(tmp_path / "b.npy", imgs.transpose(0, 3, 1, 2))
    for src in ("dir", "a.npz", "b.npy"):
        got = load_images(tmp_path / src)
        assert got.shape == (3, 3, 5, 5) and np.array_equal(got, imgs.transpose(0, 3, 1, 2))
    gray = rng.integers(0, 256, (4, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", x=gray)
    assert load_images(tmp_path / "g.npz").shape == (4, 1, 6, 6)


@pytest.mark.parametrize("make, match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no image files"),
    (lambda p: np.savez(p, a=np.zeros((2, 4, 4), np.uint8), b=np.zeros((2, 4, 4), np.uint8)), "single array"),
    (lambda p: np.savez(p, images=np.zeros((2, 4, 4), np.float32)), "uint8"),
    (lambda p: p.write_bytes(b"garbage"), "readable"),
])
def test_load_images_refusals(tmp_path, make, match):
    path = tmp_path / "x.npz"
    make(path)
    with pytest.raises(ImageLoadError, match=match):
        load_images(path)


def test_bench_fid_cli_orders_real_vs_noise(tmp_path, feddp_cache, mnist, capsys):
    train, test = mnist
    np.savez(tmp_path / "a.npz", images=train.images[:24])
    np.savez(tmp_path / "b.npz", images=test.images[:24])
    noise = np.random.default_rng(0).integers(0, 256, (24, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "n.npz", images=noise)
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]) == 0
    real = float(capsys.readouterr().out.split("fid = ")[1].split()[0])
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "n.npz")]) == 0
    out = capsys.readouterr()
    fake = float(out.out.split("fid = ")[1].split()[0])
    assert 0 < real < fake and "clean-fid" in out.out and "biased" in out.err
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_downstream_accuracy_real_beats_noise(mnist):
    train, test = mnist
    idx = np.random.default_rng(0).choice(len(train.labels), 200, replace=False)
    acc_real = downstream_accuracy(train.images[idx], train.labels[idx], test.images, test.labels, num_classes=10)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (200, 1, 28, 28), dtype=np.uint8)
    acc_noise = downstream_accuracy(noise, rng.integers(0, 10, 200), test.images, test.labels, num_classes=10)
    assert acc_real > 0.7 and acc_noise < 0.2
    assert acc_real == downstream_accuracy(train.images[idx], train.labels[idx], test.images, test.labels,
                                           num_classes=10)  # seeded


def _write_pytorch_fid_weights(path):
    """pytorch-fid's weights file in its real format (a state dict of its FID Inception), random values."""
    import torch
    from pytorch_fid import inception as pf

    net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)


def test_pytorch_fid_impl_uses_cached_weights_only(tmp_path, monkeypatch, feddp_cache, mnist):
    from benchmark import fid, inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("torch.hub._hub_dir", None)
    images = mnist[0].images[:6]
    with pytest.raises(inception.FIDUnavailableError, match="pt_inception-2015-12-05-6726825d.pth") as err:
        fid.compute_fid(images, images[::-1].copy(), extractor="pytorch-fid")
    assert str(tmp_path / "torch") in str(err.value) and "\n" not in str(err.value)

    def no_download(*a, **k):
        raise AssertionError("pytorch-fid tried to download its weights")

    monkeypatch.setattr("torch.hub.download_url_to_file", no_download)
    _write_pytorch_fid_weights(inception.pytorch_fid_weights_path())
    res = fid.compute_fid(images, images[::-1].copy(), extractor="pytorch-fid")
    assert res.fid_impl.startswith("pytorch-fid-") and np.isfinite(res.fid)
    assert fid.inception_features(images[:2], extractor="pytorch-fid").shape == (2, 2048)
    with pytest.raises(ValueError, match="unknown FID extractor"):
        fid.inception_features(images[:2], extractor="tf")


def test_downstream_accuracy_leaves_the_global_generator_and_matches_seeding_it(monkeypatch):
    """The classifier starts from the weights a global ``torch.manual_seed(seed)`` gives (its only
    torch draws), whatever the caller's generator holds, and the caller's generator is untouched."""
    import torch

    from benchmark import downstream

    data = load_dataset("digits-embedded")
    images, labels = data.images[:64], data.labels[:64]
    make, initial = downstream._classifier, []

    def recording(*args):
        model = make(*args)
        initial.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(downstream, "_classifier", recording)
    accs = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        before = torch.get_rng_state()
        accs.append(downstream.downstream_accuracy(images, labels, images, labels, num_classes=10, steps=3, seed=7))
        assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7)
    old = make(1, 10).state_dict()
    assert all(torch.equal(w[k], old[k]) for w in initial for k in old) and len(initial) == 2
    assert accs[0] == accs[1]


def test_downstream_steps_are_passes_over_the_set_with_a_floor():
    from benchmark.downstream import downstream_steps

    assert downstream_steps(16) == downstream_steps(200) == downstream_steps(400) == 200  # the old fixed 200
    assert downstream_steps(2000) == 1000 and downstream_steps(2001) == 1001  # 32 passes at batch 64
    assert downstream_steps(2000, batch_size=32) == 2000


def test_downstream_trains_on_its_own_sample_and_fid_scores_the_first_fid_n(monkeypatch, tmp_path):
    """With downstream_n_samples the run generates that many; FID (and KID) still see exactly
    fid_n_samples of them, the classifier all of them, and metrics.json says so."""
    from benchmark import downstream, fid, runner
    from benchmark.scenarios import Scenario

    scn = Scenario(name="t", dataset="digits-embedded", class_conditional=True, fid_n_samples=20,
                   downstream_n_samples=60)
    assert runner.n_generated(scn) == 60
    assert runner.n_generated(Scenario(name="u", fid_n_samples=20)) == 20
    seen = {}

    def fake_fid(real, fake, **kw):
        seen["fid"] = len(fake)
        return fid.FIDResult(1.0, 0.0, "stub", len(fake), len(fake))

    def fake_acc(images, labels, *a, **kw):
        seen["acc"] = (len(images), np.bincount(labels, minlength=10).tolist())
        return 0.5

    monkeypatch.setattr(fid, "compute_fid", fake_fid)
    monkeypatch.setattr(fid, "fid_floor", lambda train, test, n, **kw: fake_fid(None, train.images[:n]))
    monkeypatch.setattr(fid, "fid_reference", lambda test, n: (test.images[:n], "k"))
    monkeypatch.setattr(downstream, "downstream_accuracy", fake_acc)
    labels = np.arange(60) % 10
    images = np.zeros((60, 1, 8, 8), np.uint8)
    out = runner.score_stage(scn, 0, images, labels, "cpu", runner.RunOptions(tmp_path))
    assert seen["fid"] == 20 and out["fid_n_samples"] == 20
    assert seen["acc"] == (60, [6] * 10) and out["downstream_n_train"] == 60 and out["downstream_s"] >= 0
    # Without it, the classifier trains on the FID samples, as before the field existed.
    runner.score_stage(Scenario(name="u", dataset="digits-embedded", class_conditional=True, fid_n_samples=20),
                       0, images[:20], labels[:20], "cpu", runner.RunOptions(tmp_path))
    assert seen["acc"] == (20, [2] * 10)


def test_downstream_n_samples_is_checked_and_hash_neutral():
    from benchmark.scenarios import Scenario, ScenarioError

    base = Scenario(name="t", class_conditional=True)
    assert Scenario(name="t", class_conditional=True, downstream_n_samples=None).hash == base.hash
    assert Scenario(name="t", class_conditional=True, downstream_n_samples=2000).hash != base.hash
    with pytest.raises(ScenarioError, match="downstream_n_samples needs class_conditional"):
        Scenario(name="t", downstream_n_samples=100)
    with pytest.raises(ScenarioError, match="downstream_n_samples must be >= 2"):
        Scenario(name="t", class_conditional=True, downstream_n_samples=1)
