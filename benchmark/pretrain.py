"""Public pretraining: the model a federation starts from, trained without privacy on public data.

The strongest DP image generators (DPImageBench, PrivImage, DP-LDM) pretrain on public data and spend
the privacy budget only on fine-tuning. A scenario names its public dataset (``pretrain``) and how
many epochs over it (``pretrain_epochs``); the federation's global model starts from that checkpoint
instead of a random initialisation. The checkpoint depends only on what it is computed from (the
model config, the public data, the private data's image shape and classes, epochs, batch size,
learning rate, timesteps): it is trained once, with a fixed seed (the same public checkpoint for every
row and seed, as a downloaded one would be), and cached by the hash of that definition under
``<cache>/pretrained/`` (:func:`benchmark.cache.cache_dir_path`; ``$FEDDP_CACHE``).

Shipped checkpoints: the registered suites' ``cpu`` definitions ship inside the installed package
(``benchmark/pretrained/``, under the same file names, each with its JSON record: the definition,
the file's SHA-256, the torch version and threads it was trained with), as the embedded datasets
do, so a fresh machine does not spend minutes retraining them and every machine starts from the
same bytes (the CPU kernels' sums depend on the thread count). A shipped checkpoint is used before
the cache; one whose bytes do not match its record is refused in one line. They are written, and
checked to be what this code trains, by ``scripts/ship_pretrained.py`` (``--check``; the extended
test tier runs the check for the ``privacy`` suite's checkpoint).

A scenario with ``rounds = 0`` is the ``public-only`` reference: no private image touches the model,
so its row shows what the private data adds (and its membership attacks are a null: no member was
ever seen).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmark.cache import cache_dir_path
from benchmark.data import ImageDataset, load_dataset
from benchmark.model import build_unet, make_scheduler, train_epochs
from benchmark.model_configs import model_identity
from benchmark.rundir import write_json, write_torch
from benchmark.scenarios import Scenario
from benchmark.seeding import derive_seed

FORMAT = "feddp-pretrained/1"
SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"  # package data (pyproject.toml)
PRETRAIN_BATCH_SIZE = 64
PRETRAIN_LEARNING_RATE = 2e-3
PRETRAIN_SEED = 0  # fixed: one public checkpoint per definition, whatever the run's seed


class PretrainError(ValueError):
    """The public data do not fit the private data's model (one-line message)."""


def definition(scenario: Scenario, image_shape: tuple[int, int, int], num_classes: int) -> dict:
    """Everything the checkpoint is computed from."""
    return {"format": FORMAT, "dataset": scenario.pretrain, "epochs": scenario.pretrain_epochs,
            "model": model_identity(scenario.model), "image_shape": list(image_shape),
            "num_classes": num_classes if scenario.class_conditional else None,
            "batch_size": PRETRAIN_BATCH_SIZE, "learning_rate": PRETRAIN_LEARNING_RATE,
            "num_train_timesteps": scenario.num_train_timesteps, "seed": PRETRAIN_SEED}


def checkpoint_path(defn: dict, cache_dir=None) -> Path:
    key = hashlib.sha256(json.dumps(defn, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir_path(cache_dir) / "pretrained" / f"{defn['dataset']}-{defn['model']}-e{defn['epochs']}-{key}.pt"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_checkpoint(defn: dict, shipped_dir: Path | None = None) -> Path | None:
    """The checkpoint of ``defn`` that ships with the package, or None; one whose bytes differ
    from its record (a damaged install) is refused."""
    path = (SHIPPED_DIR if shipped_dir is None else Path(shipped_dir)) / checkpoint_path(defn).name
    record_path = path.with_suffix(".json")
    if not path.exists() or not record_path.exists():
        return None
    record = json.loads(record_path.read_text())
    if {k: record.get(k) for k in defn} != defn:
        raise PretrainError(f"shipped checkpoint {path.name}: its record's definition is not the one its name "
                            "hashes (rewrite it with scripts/ship_pretrained.py)")
    if sha256_file(path) != record.get("sha256"):
        raise PretrainError(f"shipped checkpoint {path} does not match its SHA-256 (a damaged install: reinstall)")
    return path


def public_data(scenario: Scenario, image_shape: tuple[int, int, int], num_classes: int,
                data_root: str | None = None) -> ImageDataset:
    public = load_dataset(scenario.pretrain, data_root=data_root, split="train")
    if tuple(public.images.shape[1:]) != tuple(image_shape):
        raise PretrainError(f"public dataset {scenario.pretrain!r} has images {list(public.images.shape[1:])}, "
                            f"the private data {list(image_shape)}: pretrain on data of the same shape")
    if scenario.class_conditional and public.num_classes != num_classes:
        raise PretrainError(f"public dataset {scenario.pretrain!r} has {public.num_classes} classes, the private "
                            f"data {num_classes}: a class-conditional model needs the same classes")
    return public


def pretrained_state(scenario: Scenario, image_shape: tuple[int, int, int], num_classes: int, *,
                     data_root: str | None = None, cache_dir=None, device: str = "cpu",
                     say: Callable[[str], None] | None = None) -> Path:
    """The checkpoint of ``scenario``'s public pretraining: the shipped one, else the cached one,
    else trained here (and cached)."""
    defn = definition(scenario, image_shape, num_classes)
    shipped = shipped_checkpoint(defn)
    if shipped is not None:
        return shipped
    path = checkpoint_path(defn, cache_dir)
    if path.exists():
        return path
    public = public_data(scenario, image_shape, num_classes, data_root)
    if say:
        say(f"public pretraining: {scenario.model} on {len(public.labels)} {scenario.pretrain} images, "
            f"{scenario.pretrain_epochs} epochs (once; cached as {path.name})")
    t0 = time.perf_counter()
    state, loss = train_public(scenario, public, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_torch(path, state)
    write_json(path.with_suffix(".json"), record(defn, path, loss=loss, train_s=time.perf_counter() - t0,
                                                 n_images=len(public.labels)))
    if say:
        say(f"public pretraining done in {time.perf_counter() - t0:.0f} s (last epoch's loss {loss:.4f})")
    return path


def record(defn: dict, path: Path, *, loss: float, train_s: float, n_images: int) -> dict:
    """A checkpoint's JSON record: its definition, what training reported, and what reproduces it."""
    return defn | {"final_epoch_loss": loss, "train_s": train_s, "n_images": int(n_images),
                   "sha256": sha256_file(path), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def train_public(scenario: Scenario, public: ImageDataset, *, device: str = "cpu") -> tuple[dict, float]:
    """Plain Adam on the public images (seeded; class-conditional as the scenario is)."""
    c, h, _ = public.images.shape[1:]
    model = build_unet(scenario.model, in_channels=c, resolution=h,
                       num_classes=public.num_classes if scenario.class_conditional else None,
                       seed=derive_seed("pretrain-init", PRETRAIN_SEED)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=PRETRAIN_LEARNING_RATE)
    stats = train_epochs(model, opt, make_scheduler(scenario.num_train_timesteps), public.images, public.labels,
                         epochs=scenario.pretrain_epochs, batch_size=PRETRAIN_BATCH_SIZE,
                         conditional=scenario.class_conditional, device=device,
                         seed=derive_seed("pretrain-batches", PRETRAIN_SEED),
                         noise_seed=derive_seed("pretrain-noise", PRETRAIN_SEED))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, stats["last_epoch_loss"]
