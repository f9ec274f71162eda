"""The named UNet configs (``unet-tiny``, ``unet-28``, ``unet-32``): plain data, no torch.

Scenarios validate their ``model`` field against this registry and ``bench list --models`` prints
it without importing diffusers; :func:`benchmark.model.build_unet` turns a name into a
``UNet2DModel``. A new config is one entry here (and its input in ``MODEL_INPUTS``).
"""

from __future__ import annotations

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
