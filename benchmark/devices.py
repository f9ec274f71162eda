"""``--device``: cpu, cuda, cuda:N or auto, checked before any work."""

from __future__ import annotations


class DeviceError(ValueError):
    """A device that does not exist here was asked for (one-line message)."""


def resolve_device(device: str) -> str:
    """``auto`` -> cuda if present else cpu; a CUDA device asked for where there is none is an error."""
    if device not in ("cpu", "auto") and not device.startswith("cuda"):
        raise DeviceError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)")
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but no CUDA GPU is available (use --device cpu)")
    try:
        idx = int(device.split(":", 1)[1]) if ":" in device else 0
    except ValueError:
        raise DeviceError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if idx >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return device
