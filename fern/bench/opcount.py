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
    kind (fused: fern.tts.csm.kernels / gemm / attention / norm / sampling / memory / elementwise), and the costliest
    kernels. Busy time well under the span means the GPU waits between kernels (launch-bound); busy time made of gemm
    at near-peak bandwidth means the frame is weight-bound."""
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
    for label, kw in (("modules", dict(fast=False)), ("fast_torch", {}), ("fused_triton", dict(kernels="triton")),
                      ("persistent", dict(kernels="persistent")),
                      ("persistent+bb", dict(kernels="persistent", backbone_kernels="triton")),
                      ("persistent_all", dict(kernels="persistent", backbone_kernels="persistent"))):
        engine = CsmEngine(model, **kw)
        if ("kernels" in kw and engine.kernels != kw["kernels"]
                or engine.backbone_kernels != kw.get("backbone_kernels", "torch")):
            out[label] = {"error": "Triton kernels unusable here (see the log)"}
            continue
        engine.temperature, engine.top_k = temperature, top_k
        engine.prepare([], seg)
        with torch.no_grad():
            counts = count_kernels(engine._frame)
        out[label] = {"kernels_per_frame": sum(counts.values()),
                      "triton_launches": sum(v for k, v in counts.items() if k.startswith("triton:")),
                      "by_op": dict(counts.most_common())}
    return out


def csm_weight_bytes_per_frame(model=None) -> dict[str, int]:
    """Bytes of weights one frame reads on each path (CSM-1B in bf16 by default, built on the meta device: shapes
    only, no memory), by the rules of ``fern.bench.tts.frame_weight_bytes`` and ``FusedDepth.weight_bytes_per_frame``
    (a test holds them equal): the backbone once; the torch path's depth decoder n_cb - 1 times (positions 0 and 1
    share a step), the fused one n_cb times; one codebook head per codebook 1..; int8 / fp8: 1 byte per weight plus
    an fp32 scale per output row."""
    if model is None:
        from transformers import CsmConfig, CsmForConditionalGeneration

        with torch.device("meta"):
            model = CsmForConditionalGeneration(CsmConfig()).to(torch.bfloat16)
    params = lambda mod: list(mod.parameters())  # noqa: E731
    nbytes = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
    bb = model.backbone_model
    base = nbytes(params(bb.layers) + params(bb.norm) + params(model.lm_head)
                  + params(model.depth_decoder.model.inputs_embeds_projector))
    depth = model.depth_decoder
    n_cb = model.config.num_codebooks
    gemv = [m.weight for layer in depth.model.layers
            for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                      layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
    head = depth.codebooks_head.weight  # (n_cb - 1, hidden, vocab)
    out = {"torch": base + (n_cb - 1) * nbytes(params(depth.model.layers) + params(depth.model.norm))
           + nbytes([head])}
    out["fused_bf16"] = base + n_cb * nbytes(gemv) + nbytes([head])
    for kind in ("int8", "fp8"):
        q = sum(w.numel() + 4 * w.shape[0] for w in gemv)
        out[f"fused_{kind}"] = base + n_cb * q + head.numel() + 4 * head.shape[0] * head.shape[2]
    return out


def main(argv=None) -> dict:
    import argparse
    import json
    import os

    p = argparse.ArgumentParser(description="Kernels per CSM frame (CSM-1B layer counts, narrow widths, CPU)")
    p.add_argument("--temperature", type=float, default=0.9, help="0: greedy (no sampling kernels)")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--json", default=None)
    p.add_argument("--peak-tbps", type=float, default=4.8, help="for the bandwidth floor (H200: 4.8 TB/s)")
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
    res["weight_bytes_per_frame"] = csm_weight_bytes_per_frame()
    print(f"CSM-1B (bf16 model) weights read per frame, and that at {args.peak_tbps} TB/s:")
    for label, b in res["weight_bytes_per_frame"].items():
        print(f"  {label:14s} {b / 1e9:6.2f} GB  {b / (args.peak_tbps * 1e12) * 1e3:5.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
