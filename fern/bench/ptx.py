"""The fused depth decoder's Triton kernels compiled for a GPU that is not here (default sm_90: H100 / H200), exactly
as the engine launches them at CSM-1B's shapes, with ptxas' resource report per kernel: registers, spilled bytes,
stack, shared memory. No GPU needed: Triton compiles for a named target and ships ptxas.

    python -m fern.bench.ptx                       # bf16 / int8 / fp8 x step kernels / persistent kernel
    python -m fern.bench.ptx --modes frame --blocks '{"BNG": 32}'   # try other block shapes

What it proves without a device: every kernel compiles for the target (a compile error would otherwise surface only
in a scarce GPU session), and which block shapes keep the kernels out of local memory (spills are slow loads and
stores on the GPU's critical path). What it cannot: speed. The launches are recorded from ``FusedDepth.run`` on a
CSM-1B built on the meta device (shapes, no weights), so the argument types, the 16-byte alignment that Triton
specialises on, and the meta-parameters are the engine's own. Must run in a process where Triton is not in its
interpreter mode (``TRITON_INTERPRET`` unset before Triton is imported).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import tempfile
import time


def record_launches(kind: str, mode: str, blocks: dict | None = None, temperature: float = 0.9,
                    top_k: int = 50) -> list[tuple]:
    """One frame's Triton launches of the fused depth decoder (``mode``: steps | frame) on CSM-1B's shapes, with
    the GPU launch shapes (``fused.GPU_BLOCKS`` / ``FRAME_GPU_BLOCKS``, updated by ``blocks``); ``backbone``: the
    backbone's Triton step (``fused_backbone.GPU_BLOCKS``; model weights only, so ``kind`` must be bf16);
    ``backbone_frame``: the backbone's persistent kernel (``fused_backbone.FRAME_GPU_BLOCKS``; on the meta device
    every layer's offset is 0, which changes no instruction); ``barrier``: the grid-barrier loop fern.bench.tts
    times."""
    import torch
    from transformers import CsmConfig, CsmForConditionalGeneration

    from fern.tts.csm import fused
    from fern.tts.csm import kernels as K
    from fern.tts.csm.engine import CsmEngine

    if mode == "barrier":  # fern.bench.tts's timing of one grid barrier (132 programs: an H100 / H200)
        from fern.bench.tts import launch_barrier_loop

        with K.LaunchRecorder() as rec:
            launch_barrier_loop(torch.zeros(4, dtype=torch.int32, device="meta"), 256, 132)
        return rec.launches
    with torch.device("meta"):
        model = CsmForConditionalGeneration(CsmConfig()).to(torch.bfloat16)
    engine = CsmEngine(model)
    if mode in ("backbone", "backbone_frame"):
        from fern.tts.csm import fused_backbone as fb

        frame = mode == "backbone_frame"
        backbone = fb.FusedBackbone(engine, blocks=dict(fb.FRAME_GPU_BLOCKS if frame else fb.GPU_BLOCKS,
                                                        **(blocks or {})), mode="frame" if frame else "layers")
        emb = torch.zeros(1, 1, backbone.D, device="meta", dtype=torch.bfloat16)
        pos = torch.zeros(1, device="meta", dtype=torch.long)
        with K.LaunchRecorder() as rec, torch.no_grad():
            backbone.run(emb, pos)
        return rec.launches
    if mode == "frame":
        gpu_blocks = dict(fused.FRAME_GPU_BLOCKS, **(fused.FRAME_GPU_BLOCKS_1BYTE if kind != "bf16" else {}))
    else:
        gpu_blocks = dict(fused.GPU_BLOCKS)
    gpu_blocks.update(blocks or {})
    depth = fused.FusedDepth(engine, "triton", kind, blocks=gpu_blocks, mode=mode)
    x = torch.zeros(1, 2, depth.D, device="meta", dtype=torch.bfloat16)
    c0 = torch.zeros(1, device="meta", dtype=torch.long)
    noise = torch.zeros(depth.n_cb - 1, depth.V, device="meta") if temperature > 0 else None
    with K.LaunchRecorder() as rec, torch.no_grad():
        depth.run(x, c0, noise, top_k)
    return rec.launches


def _aligned(arg) -> bool:
    """Whether Triton's CUDA backend would specialise the argument as divisible by 16 (pointers: the allocation's
    base is 256-byte aligned on CUDA, so the view's offset decides)."""
    if isinstance(arg, bool):
        return False
    if isinstance(arg, int):
        return arg % 16 == 0
    if hasattr(arg, "storage_offset"):
        return arg.storage_offset() * arg.element_size() % 16 == 0
    return False


def specialise(name: str, args: tuple, meta: dict):
    """(signature, constexprs, attrs, compile options) for ``triton.compiler.ASTSource``, as Triton's launcher
    would: ``num_warps`` and ``maxnreg`` are options, not kernel parameters."""
    from triton.runtime.jit import mangle_type

    from fern.tts.csm import kernels as K

    params = list(inspect.signature(K.source(name)).parameters)
    plain = set(K.DO_NOT_SPECIALIZE.get(name, ()))
    meta = dict(meta)
    options = {"num_warps": meta.pop("num_warps", 4)}
    if "maxnreg" in meta:
        options["maxnreg"] = meta.pop("maxnreg")
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(params):
        if p in meta:
            sig[p], consts[(i,)] = "constexpr", meta[p]
            continue
        a = args[i]
        if isinstance(a, int) and not isinstance(a, bool) and a == 1 and p not in plain:
            sig[p], consts[(i,)] = "constexpr", 1  # the launcher specialises ints equal to 1 as constants
            continue
        sig[p] = mangle_type(a)  # the type only (no value specialisation)
        if _aligned(a) and p not in plain:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs, options


# the kernels' weight reads: tl.load of the weight pointer, or of a layer's / head's slice of it (w_l, hw)
_WEIGHT_LOAD = re.compile(r"tl\.load\((w_ptr|w_l|hw) ")
_LOC = re.compile(r"\s*\.loc\s+(\d+)\s+(\d+)\s")
_FILE = re.compile(r'\s*\.file\s+(\d+)\s+"([^"]+)"')
_LD = re.compile(r"\bld\.global(?:\.[a-z0-9_]+)*?(?:\.v(\d))?\.[bsuf](\d+)\b")


def weight_load_widths(ptx: str) -> dict[int, int]:
    """Bytes per thread of each global load instruction that reads weights (by the PTX's line info pointing at a
    weight ``tl.load`` in fern/tts/csm/kernels.py) -> how many. 16 is a full vector load; less, a bandwidth loss."""
    from fern.tts.csm import kernels as K

    src = open(K.__file__).read().splitlines()
    weight_lines = {i + 1 for i, line in enumerate(src) if _WEIGHT_LOAD.search(line)}
    files = {int(m.group(1)): m.group(2) for m in map(_FILE.match, ptx.splitlines()) if m}
    # by the path's tail, not the file itself: Triton's cache may hold PTX compiled from another checkout of the same
    # source (the cache key is the source), whose line info names that checkout
    tail = os.path.join("fern", "tts", "csm", "kernels.py")
    ours = {n for n, path in files.items() if path.endswith(tail)}
    widths: dict[int, int] = {}
    line = None
    for text in ptx.splitlines():
        loc = _LOC.match(text)
        if loc:
            line = int(loc.group(2)) if int(loc.group(1)) in ours else None
            continue
        ld = _LD.search(text)
        if ld and line in weight_lines:
            nbytes = int(ld.group(1) or 1) * int(ld.group(2)) // 8
            widths[nbytes] = widths.get(nbytes, 0) + 1
    return widths


# an instruction that writes a register: optional guard, opcode, modifiers, destination, operands
_WRITE = re.compile(r"^\s*(@!?%p\d+\s+)?([a-z]+)((?:\.[a-z0-9]+)*)\s+(%[a-z]+\d+)\s*,\s*(.*);")
_EVALUATED = {"mov", "cvt", "and", "or", "xor", "not", "shl", "shr", "bfe", "add", "setp"}
_CMP = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
        "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}


def _width(op: str, mods: str) -> tuple[int, bool] | None:
    """(bits, signed) of an instruction's result type (.b32, .s64, .u16, ...; cvt names the destination first, the
    others their one type last), None for .pred or none."""
    types = re.findall(r"\.([bsu])(8|16|32|64)\b", mods)
    if not types:
        return None
    kind, bits = types[0] if op == "cvt" else types[-1]
    return int(bits), kind == "s"


def _thread_values(ptx: str):
    """A function (register, thread id) -> the register's value in that thread, for registers computed from
    ``%tid.x`` and constants alone by unguarded integer and predicate operations (values wrapped to the
    instruction's width); None for anything else: a register written by a guarded or unmodelled instruction (a
    load, a select, an atomic...), one defined in several places that disagree (branches), or one that depends on
    itself (a loop variable)."""
    defs: dict[str, list] = {}
    for line in ptx.splitlines():
        m = _WRITE.match(line)
        if m:
            guard, op, mods, dst, rest = m.groups()
            args = [a.strip() for a in rest.split(",")]
            known = not guard and op in _EVALUATED and (op != "setp" or len(args) == 2)
            defs.setdefault(dst, []).append((op, mods, args) if known else None)

    def literal(arg: str):
        if re.fullmatch(r"-?\d+", arg):
            return int(arg)
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", arg):
            return int(arg, 16)
        return None

    def one(op: str, mods: str, vals: list):
        width = _width(op, mods)
        if op == "setp":
            a, b = vals
            if width and width[1]:  # signed compare: read the operands as two's complement
                a, b = (v - (1 << width[0]) if v >= 1 << (width[0] - 1) else v for v in (a, b))
            return _CMP[mods.split(".")[1]](a, b)
        if ".pred" in mods:
            if op == "not":
                return not vals[0]
            if op in ("and", "or", "xor", "mov"):
                return {"and": lambda: vals[0] and vals[1], "or": lambda: vals[0] or vals[1],
                        "xor": lambda: vals[0] != vals[1], "mov": lambda: vals[0]}[op]()
            return None
        if width is None:
            return None
        a = vals[0]
        if op in ("mov", "cvt"):
            r = a
        elif op == "not":
            r = ~a
        elif op == "bfe":
            r = (a >> vals[1]) & ((1 << vals[2]) - 1)
        elif op == "shl":
            r = a << vals[1] if vals[1] < width[0] else 0
        elif op == "shr":
            r = a >> vals[1]
        else:
            r = {"and": a & vals[1], "or": a | vals[1], "xor": a ^ vals[1], "add": a + vals[1]}[op]
        return r & ((1 << width[0]) - 1)

    def value(arg: str, t: int, depth: int = 0):
        if arg == "%tid.x":
            return t
        lit = literal(arg)
        if lit is not None:
            return lit
        if arg not in defs or depth > 64:
            return None
        results = set()
        for d in defs[arg]:
            if d is None:
                return None
            op, mods, args = d
            vals = [value(a, t, depth + 1) for a in args]
            if any(v is None for v in vals):
                return None
            r = one(op, mods, vals)
            if r is None:
                return None
            results.add(r)
        return results.pop() if len(results) == 1 else None

    return value


def atomics_by_one_thread(ptx: str) -> bool | None:
    """Whether every atomic, reduction and acquire load is issued by thread 0 of the program only (None: the kernel
    has none): each one's guard predicate, evaluated for every thread of the block from ``%tid.x``, holds for thread
    0 alone, and is known for every thread (anything the evaluation cannot follow counts as unsafe). The barrier
    and the head kernel's "last program" count arrivals per program: if Triton lowered a scalar atomic to one per
    thread (or per warp), the counts would run 4-256x too fast and the barriers would not wait. (Triton 3.5 guards
    with ``tid == 0``; 3.6 with ``(tid & 31) == 0 && (tid & 127) < 32`` and the like.)"""
    sync = [line.strip() for line in ptx.splitlines()
            if re.search(r"\b(?:atom|red)\.|\bld\.[a-z0-9.]*\bacquire\b", line)]
    if not sync:
        return None
    threads = re.search(r"\.reqntid\s+(\d+)", ptx)
    if not threads:
        return False
    value = _thread_values(ptx)
    for line in sync:
        guard = re.match(r"@(%p\d+)\s", line)
        if not guard:
            return False
        issued = [value(guard.group(1), t) for t in range(int(threads.group(1)))]
        if any(v is None for v in issued) or [t for t, v in enumerate(issued) if v] != [0]:
            return False
    return True


def prefetches_then_barrier(ptx: str) -> bool | None:
    """Whether every L2 prefetch (kernels._prefetch_l2, PREFETCH=1) is followed by a grid barrier's arrival (a
    release atomic) before any other global memory access: issued after the phase's own loads, for the next phase,
    so that DRAM works while the programs wait. None: the kernel has no prefetch."""
    events = []
    for line in ptx.splitlines():
        if _PREFETCH.match(line):
            events.append("prefetch")
        elif re.search(r"\b(?:atom|red)\.[a-z0-9.]*\brelease\b", line):
            events.append("arrive")
        elif re.search(r"\b(?:ld|st|atom|red)\.global\b|\b(?:atom|red)\.", line):
            events.append("access")
    if "prefetch" not in events:
        return None
    after = [nxt for cur, nxt in zip(events, events[1:] + ["end"]) if cur == "prefetch" and nxt != "prefetch"]
    return all(nxt == "arrive" for nxt in after)


_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_STACK = re.compile(r"(\d+) bytes stack frame")
_PREFETCH = re.compile(r"^\s*(?:@%p\d+\s+)?prefetch\.global\.L2\s", re.MULTILINE)


def compile_kernel(name: str, sig: dict, consts: dict, attrs: dict, options: dict, arch: int = 90) -> dict:
    """Compile for ``sm_<arch>`` and read ptxas' report (``-v``) on the generated PTX."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    from fern.tts.csm import kernels as K

    if not K.available():
        raise RuntimeError("triton is not importable")
    if K.interpreter_active():
        raise RuntimeError("Triton is in its interpreter mode here: run without TRITON_INTERPRET")
    t0 = time.perf_counter()
    fn = triton.jit(K.source(name), do_not_specialize=K.DO_NOT_SPECIALIZE.get(name, ()))
    src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    out = {"kernel": name.lstrip("_"), "num_warps": options["num_warps"], "shared_bytes": int(compiled.metadata.shared),
           "compile_s": time.perf_counter() - t0}
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        suffix = "a" if arch >= 90 else ""
        # Triton >= 3.6 picks ptxas by architecture (get_ptxas(arch)); 3.5 has one
        tool = get_ptxas(arch) if inspect.signature(get_ptxas).parameters else get_ptxas()
        log = subprocess.run([tool.path, f"-arch=sm_{arch}{suffix}", "-v", ptx, "-o", os.path.join(tmp, "k.o")],
                             capture_output=True, text=True, check=True).stderr
    out["registers"] = int(_PTXAS.search(log).group(1))
    spill = _SPILL.search(log)
    out["spill_store_bytes"], out["spill_load_bytes"] = (int(spill.group(1)), int(spill.group(2))) if spill else (0, 0)
    stack = _STACK.search(log)
    out["stack_bytes"] = int(stack.group(1)) if stack else 0
    out["weight_load_bytes"] = weight_load_widths(compiled.asm["ptx"])
    out["atomics_by_one_thread"] = atomics_by_one_thread(compiled.asm["ptx"])
    # the persistent kernels' PREFETCH=1 (kernels._prefetch_l2): proof that the hint survived to the PTX
    out["l2_prefetches"] = len(_PREFETCH.findall(compiled.asm["ptx"]))
    out["prefetches_then_barrier"] = prefetches_then_barrier(compiled.asm["ptx"])
    return out


def report(kinds=("bf16", "int8", "fp8"), modes=("steps", "frame"), blocks: dict | None = None, arch: int = 90,
           temperature: float = 0.9) -> list[dict]:
    """Per weight kind, mode and kernel: launches per frame, distinct compilations (Triton specialises on argument
    alignment, so one kernel may compile more than once) and the worst resources among them."""
    rows = []
    for mode in modes:
        for kind in kinds:
            if mode.startswith(("backbone", "barrier")) and kind != "bf16":  # the model's own weights, or none
                continue
            compiled: dict = {}
            by_kernel: dict = {}
            for name, _grid, args, meta in record_launches(kind, mode, blocks, temperature):
                sig, consts, attrs, options = specialise(name, args, meta)
                key = (name, tuple(sig.items()), tuple(sorted(consts.items())), tuple(sorted(attrs)),
                       tuple(sorted(options.items())))
                if key not in compiled:
                    try:
                        compiled[key] = compile_kernel(name, sig, consts, attrs, options, arch)
                    except Exception as exc:  # noqa: BLE001 - reported per kernel, the others still compile
                        why = " | ".join(line.strip() for line in str(exc).splitlines() if "error" in line.lower())
                        compiled[key] = {"error": f"{type(exc).__name__}: {why[:400] or exc}"}
                row = by_kernel.setdefault(name, {"mode": mode, "weights": kind, "kernel": name.lstrip("_"),
                                                  "arch": f"sm_{arch}", "launches_per_frame": 0, "compilations": 0,
                                                  "_keys": set()})
                row["launches_per_frame"] += 1
                if key in row["_keys"]:
                    continue
                row["_keys"].add(key)
                row["compilations"] += 1
                got = compiled[key]
                if "error" in got:
                    row["error"] = got["error"]
                    continue
                row["num_warps"] = got["num_warps"]
                for fig in ("registers", "spill_store_bytes", "spill_load_bytes", "stack_bytes", "shared_bytes",
                            "l2_prefetches"):
                    row[fig] = max(row.get(fig, 0), got[fig])
                row["compile_s"] = row.get("compile_s", 0.0) + got["compile_s"]
                if got["prefetches_then_barrier"] is not None:
                    row["prefetches_then_barrier"] = row.get("prefetches_then_barrier", True) \
                        and got["prefetches_then_barrier"]
                one_thread = got["atomics_by_one_thread"]
                if one_thread is not None:
                    row["atomics_by_one_thread"] = row.get("atomics_by_one_thread", True) and one_thread
                by_bytes = row.setdefault("weight_loads_by_bytes", {})
                for nbytes, n in got["weight_load_bytes"].items():
                    by_bytes[nbytes] = max(by_bytes.get(nbytes, 0), n)
                row["min_weight_load_bytes"] = min(by_bytes, default=0)
            for row in by_kernel.values():
                del row["_keys"]
                rows.append(row)
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="bf16,int8,fp8")
    p.add_argument("--modes", default="steps,frame,backbone,backbone_frame,barrier",
                   help="steps (4 kernels per layer + head), frame (persistent), backbone (its Triton step), "
                        "backbone_frame (its persistent kernel), barrier (fern.bench.tts's grid barrier timing)")
    p.add_argument("--blocks", default=None, help="JSON dict of block shapes to override (the mode's keys)")
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100 / H200)")
    p.add_argument("--greedy", action="store_true", help="temperature 0 (no sampling code in the head)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("unset TRITON_INTERPRET: this compiles for the GPU, not for Triton's interpreter")
    rows = report(tuple(k for k in args.kinds.split(",") if k), tuple(m for m in args.modes.split(",") if m),
                  json.loads(args.blocks) if args.blocks else None, args.arch, 0.0 if args.greedy else 0.9)
    print(f"CSM-1B depth decoder and backbone kernels compiled for sm_{args.arch} (no GPU: resources from ptxas -v)")
    print(f"  {'mode':14s} {'weights':7s} {'kernel':24s} {'launches':>8s} {'builds':>6s} {'warps':>5s} {'regs':>4s} "
          f"{'spill st/ld B':>13s} {'stack B':>7s} {'smem B':>7s} {'weight ld B':>11s} {'L2 pf':>5s}")
    for r in rows:
        if "error" in r:
            print(f"  {r['mode']:14s} {r['weights']:7s} {r['kernel']:24s} FAILED {r['error']}")
            continue
        print(f"  {r['mode']:14s} {r['weights']:7s} {r['kernel']:24s} {r['launches_per_frame']:8d} "
              f"{r['compilations']:6d} {r['num_warps']:5d} "
              f"{r['registers']:4d} {r['spill_store_bytes']:6d}/{r['spill_load_bytes']:<6d} {r['stack_bytes']:7d} "
              f"{r['shared_bytes']:7d} {r['min_weight_load_bytes']:11d} {r['l2_prefetches']:5d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
