"""Your own images (issue 27): the ``folder:PATH`` dataset, the ``by-site`` partition, bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from benchmark.data import DatasetError, is_public, load_dataset
from benchmark.partition import PartitionError, make_partition

SITES = ("hospital-a", "hospital-b", "hospital-c")
CLASSES = ("normal", "pneumonia", "effusion")


def write_folder(root, *, sites=SITES, classes=CLASSES, per_cell=5, size=16, mode="L", fmt="png"):
    """PATH/<site>/<class>/<i>.<fmt> (or PATH/<class>/... with ``sites=()``); each image a
    different pattern, so that every file's bytes are its own."""
    rng = np.random.default_rng(0)
    for s in sites or (None,):
        for c in classes:
            folder = root / c if s is None else root / s / c
            folder.mkdir(parents=True)
            for i in range(per_cell):
                shape = (size, size) if mode == "L" else (size, size, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / f"{i}.{fmt}")
    return root


def test_site_layout_loads_sorted_classes_sites_and_a_stratified_split(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "data")
    train = load_dataset(f"folder:{root}", split="train")
    test = load_dataset(f"folder:{root}", split="test")
    assert train.images.shape[1:] == (1, 16, 16) and train.images.dtype == np.uint8
    assert train.class_names == tuple(sorted(CLASSES)) and train.num_classes == 3 and train.site_names == SITES
    assert len(train) + len(test) == 3 * 3 * 5 and len(test) == 9   # one of every (site, class) cell's 5
    for k in range(3):
        for c in range(3):
            assert ((test.sites == k) & (test.labels == c)).sum() == 1
    assert not train.public and not is_public(f"folder:{root}") and is_public("digits-embedded")
    assert train.name.startswith("folder-") and train.content_hash and train.name == test.name
    # The label of an image is its class folder's rank among the sorted names.
    first = Image.open(root / "hospital-a" / "effusion" / "0.png")
    hits = np.flatnonzero((np.r_[train.images, test.images][:, 0] == np.asarray(first)).all(axis=(1, 2)))
    assert len(hits) == 1 and np.r_[train.labels, test.labels][hits[0]] == sorted(CLASSES).index("effusion")
    # The second load reads the cache: nothing is decoded.
    monkeypatch.setattr("benchmark.folder_data._decode", lambda *a: pytest.fail("decoded again"))
    again = load_dataset(f"folder:{root}", split="train")
    assert np.array_equal(again.images, train.images) and np.array_equal(again.sites, train.sites)
    manifest = json.loads(str(np.load(next((tmp_path / "cache" / "folders").glob("*.npz")))["manifest"]))
    assert sum(f["split"] == "test" for f in manifest["files"]) == 9 and manifest["sites"] == list(SITES)


def test_a_changed_file_is_a_new_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "data", sites=(), per_cell=4)
    before = load_dataset(f"folder:{root}")
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(root / "normal" / "0.png")
    after = load_dataset(f"folder:{root}")
    assert after.name != before.name and after.content_hash != before.content_hash
    assert after.sites is None and after.site_names == ()


def test_class_layout_colour_jpeg_and_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "data", sites=(), mode="RGB", fmt="jpg", size=20)
    rgb = load_dataset(f"folder:{root}")
    assert rgb.images.shape[1:] == (3, 20, 20)
    grey = load_dataset(f"folder:{root}", image_size=8, channels=1)
    assert grey.images.shape[1:] == (1, 8, 8) and len(grey) == len(rgb)


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("file", "is not a folder"),
    ("no-classes", "has no class folders"),
    ("empty-class", "holds no image"),
    ("truncated", "cannot read image"),
    ("mixed-channels", "mixed channel counts"),
    ("mixed-sizes", "images of different sizes"),
    ("not-square", "not square"),
    ("too-deep", "one folder too deep"),
    ("mixed-layout", "use one layout"),
])
def test_bad_folders_are_refused_in_one_line_naming_the_place(tmp_path, monkeypatch, case, match):
    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    if case == "missing":
        root = tmp_path / "nope"
    elif case == "file":
        root.write_text("x")
    elif case == "no-classes":
        root.mkdir()
    else:
        write_folder(root, sites=() if case != "too-deep" and case != "mixed-layout" else SITES, per_cell=3)
    if case == "empty-class":
        (root / "empty").mkdir()
    elif case == "truncated":
        png = root / "normal" / "0.png"
        png.write_bytes(png.read_bytes()[:40])
    elif case == "mixed-channels":
        Image.fromarray(np.zeros((16, 16, 3), np.uint8), mode="RGB").save(root / "normal" / "rgb.png")
    elif case == "mixed-sizes":
        Image.fromarray(np.zeros((12, 12), np.uint8), mode="L").save(root / "normal" / "small.png")
    elif case == "not-square":
        for p in root.rglob("*.png"):
            Image.fromarray(np.zeros((16, 12), np.uint8), mode="L").save(p)
    elif case == "too-deep":
        (root / "hospital-a" / "normal" / "extra").mkdir()
    elif case == "mixed-layout":
        (root / "loose").mkdir()
        Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(root / "loose" / "a.png")
    with pytest.raises(DatasetError, match=match) as err:
        load_dataset(f"folder:{root}")
    assert "\n" not in str(err.value)
    if case in ("empty-class", "truncated"):
        assert str(root) in str(err.value)


def test_by_site_partition_gives_each_site_to_one_party(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))
    ds = load_dataset(f"folder:{write_folder(tmp_path / 'data')}")
    part = make_partition(ds.labels, scheme="by-site", num_clients=3, seed=1, sites=ds.sites,
                          site_names=ds.site_names)
    assert part.scheme == "by-site"
    for k, client in enumerate(part.clients):
        mine = np.r_[client.train_idx, client.heldout_idx]
        assert set(ds.sites[mine]) == {k} and len(mine) == (ds.sites == k).sum()   # all its images, only its
        assert len(client.heldout_idx) >= 1 and len(client.train_idx) >= 1
    with pytest.raises(PartitionError, match="must equal the number of sites, 3"):
        make_partition(ds.labels, scheme="by-site", num_clients=2, seed=1, sites=ds.sites, site_names=ds.site_names)
    with pytest.raises(PartitionError, match="needs a dataset with sites"):
        make_partition(ds.labels, scheme="by-site", num_clients=3, seed=1)


def test_scenario_rules_for_folder_fields():
    from benchmark.scenarios import Scenario, ScenarioError

    with pytest.raises(ScenarioError, match="apply to folder: datasets only"):
        Scenario(name="x", dataset="digits-embedded", image_size=16)
    with pytest.raises(ScenarioError, match="'by-site' needs a folder:PATH dataset"):
        Scenario(name="x", dataset="digits-embedded", partition="by-site")
    with pytest.raises(ScenarioError, match="channels must be 1 or 3"):
        Scenario(name="x", dataset="folder:/data", channels=2)
    s = Scenario(name="x", dataset="folder:/data", partition="by-site", image_size=16, channels=1)
    assert s.definition()["image_size"] == 16
    assert "image_size" not in Scenario(name="y").definition()   # hash-neutral when unset


# ----------------------------------------------------------------------------------- your own UNet
def _config(tmp_path, **fields):
    cfg = {"_class_name": "UNet2DModel", "_diffusers_version": "0.30.0", "block_out_channels": [8, 16],
           "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
           "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 4} | fields
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return f"config:{path}"


def test_own_unet_config_builds_for_the_data_and_refuses_what_does_not_fit(tmp_path):
    from benchmark.model import ModelConfigError, build_unet, count_parameters

    name = _config(tmp_path)
    model = build_unet(name, in_channels=1, resolution=16, num_classes=3)
    assert model.config.sample_size == 16 and model.config.num_class_embeds == 3
    assert list(model.config.block_out_channels) == [8, 16] and count_parameters(model) > 0
    for fields, match in (({"sample_size": 32}, "sample_size = 32 does not fit the data .the images are 16x16"),
                          ({"in_channels": 3}, "in_channels = 3 does not fit"),
                          ({"num_class_embeds": 10}, "class-conditional over 3 classes"),
                          ({"_class_name": "UNet2DConditionModel"}, "not a UNet2DModel"),
                          ({"layers_per_block": "two"}, "UNet2DModel refuses the config")):
        with pytest.raises(ModelConfigError, match=match) as err:
            build_unet(_config(tmp_path, **fields), in_channels=1, resolution=16, num_classes=3)
        assert "\n" not in str(err.value)
    with pytest.raises(ModelConfigError, match="downsamples by 2"):
        build_unet(name, in_channels=1, resolution=15)
    with pytest.raises(ModelConfigError, match="does not exist"):
        build_unet(f"config:{tmp_path / 'nope.json'}", in_channels=1, resolution=16)


def test_a_folder_scenario_that_does_not_fit_is_refused_before_training_with_exit_2(tmp_path, monkeypatch, capsys):
    """Bad input through ``bench run``: one line, exit 2, no run folder."""
    from benchmark.cli import main

    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "data")
    cases = {
        "missing": f'dataset = "folder:{tmp_path / "nope"}"\npartition = "by-site"\nnum_clients = 3',
        "sites": f'dataset = "folder:{root}"\npartition = "by-site"\nnum_clients = 2\nclients_per_round = 2',
        "config": f'dataset = "folder:{root}"\npartition = "by-site"\nnum_clients = 3\n'
                  f'model = "{_config(tmp_path, sample_size=32)}"',
    }
    for case, body in cases.items():
        f = tmp_path / f"{case}.toml"
        f.write_text(f'name = "{case}"\nrounds = 1\nfid_n_samples = 8\n' + body + "\n")
        code = main(["run", "--scenario-file", str(f), "--out", str(tmp_path / "runs"), "--results",
                     str(tmp_path / "r"), "--no-progress"])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert code == 2 and err[-1].startswith("bench: error: "), (case, err)
        assert {"missing": "does not exist", "sites": "must equal the number of sites, 3",
                "config": "sample_size = 32 does not fit"}[case] in err[-1]
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("DONE"))


# ---------------------------------------------------------------------------------- end to end
def _contains(haystack: np.ndarray, image: np.ndarray) -> bool:
    """Whether ``image`` (H, W) appears in ``haystack`` (rows, cols) exactly, at its own size or
    blown up by an integer factor (nearest neighbour, as the sample grids and figures draw)."""
    for f in range(1, 9):
        u = np.kron(image, np.ones((f, f), np.uint8)) if f > 1 else image
        h, w = u.shape
        if h > haystack.shape[0] or w > haystack.shape[1]:
            break
        first = u[0].tobytes()
        for r in range(haystack.shape[0] - h + 1):
            row = haystack[r].tobytes()
            at = row.find(first)
            while at != -1:
                if at % haystack.itemsize == 0:
                    c = at // haystack.itemsize
                    if c + w <= haystack.shape[1] and np.array_equal(haystack[r:r + h, c:c + w], u):
                        return True
                at = row.find(first, at + 1)
    return False


def _published_images_hold(folder, images) -> list[str]:
    """The files under ``folder`` that hold one of ``images`` (N, 1, H, W): their file bytes, their
    raw pixel bytes, or (PNGs) the image drawn into them."""
    hits = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(img.tobytes() in data for img in images):
            hits.append(str(path))
            continue
        if path.suffix == ".png":
            a = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
            if any(_contains(a, img[0]) for img in images):
                hits.append(str(path))
    return hits


@pytest.mark.slow  # a federated run with attacks on a written folder (a minute or two on 2 cores)
def test_a_private_folder_runs_by_site_end_to_end_and_publishes_none_of_its_images(tmp_path, feddp_cache):
    """Issue 27's must-be-true: PATH/<site>/<class>/*.png (three sites, three classes, 16x16
    grayscale) with partition by-site and a UNet config.json of one's own (``config:PATH``) through
    ``bench run --scenario-file``; partition.json has one
    party per site holding only that site's images; the published folder holds none of the training
    or held-out images (the checker is shown to find one where one is drawn: a positive control)."""
    import pandas as pd

    from benchmark.cli import main
    from benchmark.rundir import sample_grid_png

    root = write_folder(tmp_path / "data", per_cell=8)
    scn = tmp_path / "own.toml"
    scn.write_text(f'name = "own-images"\ndataset = "folder:{root}"\npartition = "by-site"\nnum_clients = 3\n'
                   'clients_per_round = 3\nrounds = 1\nbatch_size = 8\nnum_train_timesteps = 100\nsample_steps = 2\n'
                   'fid_n_samples = 16\nclass_conditional = true\nattacks = ["mia-loss", "inversion"]\n'
                   f'model = "{_config(tmp_path)}"\n')   # your own UNet, one that fits
    out, results = tmp_path / "runs", tmp_path / "results"
    code = main(["run", "--scenario-file", str(scn), "--out", str(out), "--results", str(results), "--no-progress"])
    assert code == 0
    (run,) = list((out / "custom").glob("own-images-*/seed-0"))
    part = json.loads((run / "partition.json").read_text())
    assert part["scheme"] == "by-site" and [c["site"] for c in part["clients"]] == list(SITES)
    assert [c["sites_held"] for c in part["clients"]] == [[s] for s in SITES]
    train = load_dataset(f"folder:{root}", split="train")
    test = load_dataset(f"folder:{root}", split="test")
    assert sum(len(c["train_idx"]) + len(c["heldout_idx"]) for c in part["clients"]) == len(train)
    board = pd.read_csv(results / "custom" / "leaderboard.csv")
    assert board.dataset[0] == "folder:data" and np.isfinite(board.fid[0]) and board.partition[0] == "by-site"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["model_params"] < 100_000        # the config's (8, 16) channels, not unet-tiny's
    assert (run / "inversion.png").exists()            # the operator's own run folder keeps the figure
    assert not (results / "custom" / "inversion").exists()
    readme = (results / "custom" / "README.md").read_text()
    assert "## Private data" in readme and "`fid_floor`" in readme
    every = np.concatenate([train.images, test.images])
    assert _published_images_hold(results, every) == []
    # The folder changes: resuming into the old runs would mix two datasets in one row; refused.
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(root / "hospital-b" / "normal" / "0.png")
    assert main(["run", "--scenario-file", str(scn), "--out", str(out), "--results", str(results), "--no-progress",
                 "--resume"]) == 2
    # Positive control: a grid with one training image drawn in is found.
    control = tmp_path / "control"
    control.mkdir()
    sample_grid_png(np.concatenate([np.zeros((3, 1, 16, 16), np.uint8), train.images[5:6]]), control / "grid.png")
    assert _published_images_hold(control, every) == [str(control / "grid.png")]


def test_the_readme_example_folder_script_writes_a_loadable_site_layout(tmp_path, monkeypatch):
    import subprocess
    import sys

    from conftest import REPO

    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "hospitals"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "write_image_folder.py"), str(out), "--sites", "3"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    train, test = (load_dataset(f"folder:{out}", split=s) for s in ("train", "test"))
    assert train.site_names == ("site-a", "site-b", "site-c") and train.class_names == tuple(map(str, range(10)))
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (1, 8, 8)
    sizes = np.bincount(train.sites)
    assert sizes[0] > sizes[1] > sizes[2] > 0          # unequal sites, as hospitals are
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "write_image_folder.py"), str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "not an empty folder" in again.stderr


def test_bench_partitions_writes_each_site_its_own_file(tmp_path, monkeypatch, capsys):
    """A deployment's SuperNode per hospital: partition k is site k's images only."""
    from benchmark.cli import main
    from benchmark.federation.partition_files import partition_site, read_partition
    from benchmark.scenarios import Scenario

    monkeypatch.setenv("FEDDP_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "data")
    s = Scenario(name="sites", dataset=f"folder:{root}", partition="by-site", num_clients=3, clients_per_round=3)
    code = main(["partitions", "--scenario", json.dumps(s.to_dict()), "--out", str(tmp_path / "parts")])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" of site ")[1].split()[0] for ln in lines[:3]] == list(SITES)
    train = load_dataset(f"folder:{root}")
    for k, site in enumerate(SITES):
        path = tmp_path / "parts" / f"partition-{k}.npz"
        assert partition_site(path) == site
        part = read_partition(path, scenario=s, seed=0, partition_id=k)
        mine = {img.tobytes() for img in train.images[train.sites == k]}
        assert part.images.shape[0] >= 1 and {img.tobytes() for img in part.images} <= mine


def test_resume_refuses_a_run_of_another_folder_content_or_unet_config(tmp_path, monkeypatch):
    """``folder:`` and ``config:`` name paths whose content can change under one scenario hash: a
    completed run kept by --resume must be of the current content (else the row mixes two)."""
    from benchmark.model_configs import model_identity
    from benchmark.runner import RunError, _check_resumed
    from benchmark.scenarios import Scenario

    name = _config(tmp_path)
    s = Scenario(name="x", dataset=f"folder:{tmp_path / 'data'}", model=name)
    run = tmp_path / "run"
    run.mkdir()
    (run / "partition.json").write_text(json.dumps({"dataset_sha256": "abc"}))
    (run / "metrics.json").write_text(json.dumps({"model_config": model_identity(name)}))
    _check_resumed(s, run, lambda: "abc")                       # the same content: kept
    with pytest.raises(RunError, match="another version of the images"):
        _check_resumed(s, run, lambda: "def")
    _config(tmp_path, layers_per_block=2)                       # the config file edited in place
    with pytest.raises(RunError, match="another version of the UNet config"):
        _check_resumed(s, run, lambda: "abc")
    (run / "partition.json").write_text("{not json")
    with pytest.raises(RunError, match="unreadable"):
        _check_resumed(s, run, lambda: "abc")
