"""Global speed flags of the ``optim`` group. Per-model flags (attention kernel, static cache, compile, CUDA graphs,
bf16) are read by the stages from their own configs, which interpolate ``${optim.*}``."""

from __future__ import annotations

from typing import Any


def set_backend_flags(tf32: bool, cudnn_benchmark: bool) -> None:
    """The process-wide PyTorch math flags; stages and benchmarks built outside run.py call this too."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    if _torch_before(2, 10):
        # torch 2.9 tries cuDNN attention first on Hopper, and it misbehaves under CUDA graph capture for query
        # lengths not divisible by 128 (pytorch#169849); 2.10 turns it off by default for CUDA < 12.9
        torch.backends.cuda.enable_cudnn_sdp(False)


def _torch_before(major: int, minor: int) -> bool:
    import torch

    version = torch.__version__.split("+")[0].split(".")
    return (int(version[0]), int(version[1])) < (major, minor)


def apply_optim(optim: Any) -> dict[str, Any]:
    """Apply the process-wide flags and return what is in force, for logging."""
    import torch

    set_backend_flags(optim.tf32, optim.cudnn_benchmark)
    return {
        "optim.applied.tf32": torch.backends.cuda.matmul.allow_tf32,
        "optim.applied.cudnn_benchmark": torch.backends.cudnn.benchmark,
        "optim.applied.float32_matmul_precision": torch.get_float32_matmul_precision(),
        "optim.applied.cudnn_sdp": torch.backends.cuda.cudnn_sdp_enabled(),
        "optim.applied.cuda_available": torch.cuda.is_available(),
    }
