"""Count the operators a piece of PyTorch code dispatches, views excluded.

At batch 1 a CSM frame is bound by how many small kernels it launches, not by bandwidth, so the number of compute
operators per frame is the figure to drive down. This counts aten operators as dispatched, with ``rms_norm`` counted
once (CPU decomposes it into five ops; CUDA runs it as one fused kernel), so the count stands for CUDA kernels
wherever it is taken. The CUDA kernel count itself comes from the profiler (``python -m fern.bench.tts --profile``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_NO_KERNEL = {"_unsafe_view"}  # returns a tensor on the same storage, without an alias annotation
_ONE_KERNEL = {torch.rms_norm, torch.nn.functional.rms_norm}  # composite on CPU, fused on CUDA


def _is_view(func) -> bool:
    """A view returns an alias of an input that it does not write (in-place ops alias what they write)."""
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


class _Dispatched(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.paused and not _is_view(func) and name not in _NO_KERNEL:
            self.ops[name] += 1
            if name == "addmm" and getattr(args[0], "dim", lambda: 0)() == 2:
                self.ops["copy (addmm's 2-D input)"] += 1  # out of place, a 2-D addend is copied before the GEMM
        return func(*args, **(kwargs or {}))


class _Fused(TorchFunctionMode):
    def __init__(self, dispatched: _Dispatched) -> None:
        super().__init__()
        self.dispatched = dispatched

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in _ONE_KERNEL or self.dispatched.paused:
            return func(*args, **(kwargs or {}))
        self.dispatched.ops[func.__name__] += 1
        self.dispatched.paused = True
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.dispatched.paused = False


def count_ops(fn: Callable[[], object]) -> Counter[str]:
    """Run ``fn()`` once and return how many times each compute operator (no views) was dispatched."""
    dispatched = _Dispatched()
    with dispatched, _Fused(dispatched):
        fn()
    return dispatched.ops


_KERNEL_KINDS = (  # first match wins; by CUDA kernel name
    ("gemm", ("gemm", "gemv", "cutlass", "xmma", "cublas", "splitk", "sm90_", "sm80_", "ampere_", "hopper_")),
    ("attention", ("fmha", "flash", "attention", "attn")),
    ("norm", ("rms", "norm")),
    ("sampling", ("topk", "sort", "argmax", "argmin", "gather", "exponential", "distribution")),
    ("memory", ("memcpy", "memset", "copy", "index", "cat", "fill")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in _KERNEL_KINDS:
        if any(k in low for k in keys):
            return kind
    return "elementwise/other"


def profile_cuda_kernels(fn: Callable[[], object], repeats: int) -> dict:
    """Run ``fn`` ``repeats`` times under the CUDA profiler and summarise per repeat: kernels launched, time the GPU
    spent in kernels, the span from the first kernel's start to the last one's end, the share of kernel time by
    kind (gemm / attention / norm / sampling / memory / elementwise), and the costliest kernels. Busy time well
    under the span means the GPU waits between kernels (launch-bound); busy time made of gemm at near-peak
    bandwidth means the frame is weight-bound."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    if not kernels:
        return {"kernels_per_repeat": 0.0}
    busy = sum(e.device_time_total for e in kernels)
    span = max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)
    by_kind: Counter[str] = Counter()
    by_name: Counter[str] = Counter()
    count_by_name: Counter[str] = Counter()
    for e in kernels:
        by_kind[kernel_kind(e.name)] += e.device_time_total
        by_name[e.name] += e.device_time_total
        count_by_name[e.name] += 1
    out = {
        "kernels_per_repeat": len(kernels) / repeats,
        "kernel_busy_ms_per_repeat": busy / repeats / 1e3,
        "kernel_span_ms_per_repeat": span / repeats / 1e3,
    }
    busy = max(busy, 1e-9)
    for kind, us in by_kind.items():
        out[f"share_{kind.split('/')[0]}"] = us / busy
    out["top_kernels"] = [
        {"name": name[:90], "per_repeat": count_by_name[name] / repeats, "avg_us": us / count_by_name[name],
         "share": us / busy}
        for name, us in by_name.most_common(12)
    ]
    return out
