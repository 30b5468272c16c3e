"""Device resolution shared by every stage (``device: auto`` picks CUDA when a GPU is usable)."""

from __future__ import annotations

from fern.errors import ConfigValueError


def resolve_torch_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigValueError(f"device={device} was asked for but PyTorch sees no CUDA GPU; use device=cpu or auto")
    return device


def resolve_ctranslate2_device(device: str) -> str:
    import ctranslate2

    has_cuda = ctranslate2.get_cuda_device_count() > 0
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device.startswith("cuda") and not has_cuda:
        raise ConfigValueError(f"device={device} was asked for but CTranslate2 sees no CUDA GPU; use device=cpu or auto")
    return device.split(":")[0]
