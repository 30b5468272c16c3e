"""Count the operators a piece of PyTorch code dispatches, views excluded.

At batch 1 a CSM frame is bound by how many small kernels it launches, not by bandwidth, so the number of compute
operators per frame is the figure to drive down. This counts aten operators as dispatched, with ``rms_norm`` counted
once (CPU decomposes it into five ops; CUDA runs it as one fused kernel), so the count stands for CUDA kernels
wherever it is taken. Triton launches of the fused depth decoder are counted by :func:`count_kernels`. The CUDA kernel
count itself comes from the profiler (``python -m fern.bench.tts --profile``).
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


def count_kernels(fn: Callable[[], object]) -> Counter[str]:
    """:func:`count_ops` plus the Triton kernels ``fn`` launches (``fern.tts.csm.kernels``, one kernel each, named
    ``triton:<kernel>``): kernels per run for code that mixes both, counted without a GPU."""
    from fern.tts.csm.kernels import LaunchCounter

    with LaunchCounter() as launched:
        ops = count_ops(fn)
    ops.update(launched.launches)
    return ops


_KERNEL_KINDS = (  # first match wins; by CUDA kernel name
    ("fused", ("_norm_qkv_cache", "_attn_o_residual", "_norm_gateup_swiglu", "_down_residual", "_norm_head_sample")),
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
    kind (fused: fern.tts.csm.kernels / gemm / attention / norm / sampling / memory / elementwise), and the costliest kernels. Busy time well
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


def csm_kernels_per_frame(temperature: float = 0.9, top_k: int = 50) -> dict[str, dict]:
    """Kernels per CSM frame for each frame loop, on CSM-1B's layer counts (16 backbone and 4 depth-decoder layers,
    32 codebooks, 2051-entry vocab) with narrow widths: the count depends on the layers, not their width, so this runs
    on a CPU. The Triton path runs in Triton's interpreter: TRITON_INTERPRET=1 must be set before Triton is imported
    (``main`` does so)."""
    from fern.tts.csm.engine import CsmEngine, Segment
    from fern.tts.csm.tiny import tiny_csm_config

    cfg = tiny_csm_config(max_positions=64)
    cfg.num_hidden_layers = 16
    cfg.depth_decoder_config.num_hidden_layers = 4
    from transformers import CsmForConditionalGeneration

    torch.manual_seed(0)
    model = CsmForConditionalGeneration(cfg).eval()
    seg = Segment(torch.arange(1, 9))
    out = {}
    for label, kw in (("modules", dict(fast=False)), ("fast_torch", {}), ("fused_triton", dict(kernels="triton"))):
        engine = CsmEngine(model, **kw)
        if label == "fused_triton" and engine.kernels != "triton":
            out[label] = {"error": "Triton kernels unusable here (see the log)"}
            continue
        engine.temperature, engine.top_k = temperature, top_k
        engine.prepare([], seg)
        with torch.no_grad():
            counts = count_kernels(engine._run_frame)
        out[label] = {"kernels_per_frame": sum(counts.values()),
                      "triton_launches": sum(v for k, v in counts.items() if k.startswith("triton:")),
                      "by_op": dict(counts.most_common())}
    return out


def main(argv=None) -> dict:
    import argparse
    import json
    import os

    p = argparse.ArgumentParser(description="Kernels per CSM frame (CSM-1B layer counts, narrow widths, CPU)")
    p.add_argument("--temperature", type=float, default=0.9, help="0: greedy (no sampling kernels)")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports Triton (transformers does)
    res = csm_kernels_per_frame(args.temperature, args.top_k)
    print(f"CSM frame, CSM-1B layer counts, temperature={args.temperature}, top_k={args.top_k} "
          f"(aten operators, views excluded, rms_norm as one, + Triton launches)")
    for label, r in res.items():
        if "error" in r:
            print(f"  {label:14s} {r['error']}")
        else:
            print(f"  {label:14s} {r['kernels_per_frame']:6d} kernels/frame ({r['triton_launches']} Triton)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
