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
        raise ConfigValueError(f"device={device} was asked for but CTranslate2 sees no CUDA GPU; "
                               "use device=cpu or auto")
    return device.split(":")[0]


_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "fp16": "float16", "half": "float16"}


def resolve_torch_dtype(dtype: str, device: str, setting: str = "dtype", half: bool = True):
    """``auto``: with ``half`` (the stage's ``bf16`` flag, from ``optim.bf16``) bf16 on a GPU that has it (else
    fp16); fp32 otherwise and on a CPU. ``setting`` names the config key in errors."""
    import torch

    if dtype == "auto":
        if half and device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPE_NAMES:
        raise ConfigValueError(f"{setting}={dtype!r} is not one of auto, float32, bfloat16, float16")
    return getattr(torch, _DTYPE_NAMES[dtype])
