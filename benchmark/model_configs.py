"""The named UNet configs (``unet-tiny``, ``unet-28``, ``unet-32``): plain data, no torch.

Scenarios validate their ``model`` field against this registry and ``bench list --models`` prints
it without importing diffusers; :func:`benchmark.model.build_unet` turns a name into a
``UNet2DModel``. A new config is one entry here (and its input in ``MODEL_INPUTS``).

Your own UNet: ``model = "config:PATH"`` names a diffusers ``UNet2DModel`` ``config.json`` (what
``UNet2DModel.save_config`` / ``save_pretrained`` write; the weights are not read: the model starts
from its seeded initialisation or the scenario's public pretraining). Its ``sample_size``,
``in_channels``, ``out_channels`` and ``num_class_embeds``, where it sets them, must fit the data (the
images' size and channels, the classes of a class-conditional scenario, none otherwise); where it
does not set them, the data sets them (:func:`read_config`, :func:`data_fields`).
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_PREFIX = "config:"
# The UNet2DModel fields the data decides: checked against it where a config sets them.
DATA_FIELDS = ("sample_size", "in_channels", "out_channels", "num_class_embeds")


class ModelConfigFileError(ValueError):
    """A ``config:PATH`` file cannot be read or is not a UNet2DModel config (one line)."""


def is_config_path(name: str) -> bool:
    return name.startswith(CONFIG_PREFIX) and len(name) > len(CONFIG_PREFIX)


def read_config(name: str) -> dict:
    """The architecture of ``config:PATH``: the JSON object without diffusers' bookkeeping keys
    (``_class_name``, ``_diffusers_version``, ...), or one-line :class:`ModelConfigFileError`."""
    path = Path(name[len(CONFIG_PREFIX):]).expanduser()
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelConfigFileError(f"model {name!r}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelConfigFileError(f"model {name!r}: {path} is not a JSON config "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise ModelConfigFileError(f"model {name!r}: {path} must hold a JSON object (a UNet2DModel config.json)")
    cls = cfg.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ModelConfigFileError(f"model {name!r}: {path} configures a {cls}, not a UNet2DModel")
    if "block_out_channels" not in cfg:
        raise ModelConfigFileError(f"model {name!r}: {path} has no block_out_channels (not a UNet2DModel config?)")
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def model_identity(name: str) -> str:
    """What names a model's architecture in caches and run records: a registered name itself; for
    ``config:PATH``, ``config-<sha256 of the file's bytes, 12 hex>`` (an edited file is another model)."""
    if not is_config_path(name):
        return name
    import hashlib

    path = Path(name[len(CONFIG_PREFIX):]).expanduser()
    try:
        return f"config-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    except OSError as e:
        raise ModelConfigFileError(f"model {name!r}: cannot read {path} ({e.strerror or e})") from None


def data_fields(name: str, cfg: dict, *, in_channels: int, resolution: int, num_classes: int | None) -> dict:
    """The fields the data decides, checked against those ``cfg`` sets (one-line
    :class:`ModelConfigFileError` naming the first that does not fit)."""
    want = {"sample_size": resolution, "in_channels": in_channels, "out_channels": in_channels,
            "num_class_embeds": num_classes}
    for key, value in want.items():
        have = cfg.get(key)
        if key in cfg and have is not None and not (isinstance(have, (list, tuple)) and key == "sample_size"
                                                    and list(have) == [resolution, resolution]) and have != value:
            what = {"sample_size": f"the images are {resolution}x{resolution}",
                    "in_channels": f"the images have {in_channels} channel(s)",
                    "out_channels": f"the images have {in_channels} channel(s)",
                    "num_class_embeds": (f"the scenario is class-conditional over {num_classes} classes"
                                         if num_classes else "the scenario is not class-conditional")}[key]
            raise ModelConfigFileError(f"model {name!r}: {key} = {have} does not fit the data ({what})")
    return want

# Named UNet configs. Channels and resolution come from the dataset; these fix the architecture.
# Every config has one attention level, as in DDPM; that is what exercises Opacus' conv grad
# sampler on the non-contiguous activations attention hands on (see privacy/).
MODEL_CONFIGS: dict[str, dict] = {
    # Tests and the CPU scale: 0.18M parameters at 28 px.
    "unet-tiny": dict(
        block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    ),
    # 28 px grayscale (MNIST, Fashion-MNIST, MedMNIST): 1.6M parameters.
    "unet-28": dict(
        block_out_channels=(32, 64, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    ),
    # 32 px RGB (CIFAR-10, SVHN): 25.8M parameters.
    "unet-32": dict(
        block_out_channels=(128, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    ),
}


# The input each config is made for (channels, resolution): what verify-dp and perf run on.
MODEL_INPUTS: dict[str, tuple[int, int]] = {"unet-tiny": (1, 28), "unet-28": (1, 28), "unet-32": (3, 32)}
