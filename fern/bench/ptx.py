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
# a pipelined loop's loads (tl.range(num_stages > 1)): asynchronous copies into shared memory, bytes per thread last
_CP_ASYNC = re.compile(r"\bcp\.async\.c[ag]\.shared\.global\s*\[[^\]]*\]\s*,\s*\[[^\]]*\]\s*,\s*(0x[0-9a-f]+|\d+)")


def _weight_lines(src: list[str]) -> set[int]:
    return {i + 1 for i, line in enumerate(src) if _WEIGHT_LOAD.search(line)}


def weight_load_widths(ptx: str, weight_lines: set[int] | None = None) -> dict[int, int]:
    """Bytes per thread of each global load instruction that reads weights (by the PTX's line info pointing at a
    weight ``tl.load`` in fern/tts/csm/kernels.py) -> how many. 16 is a full vector load; less, a bandwidth loss.
    Pipelined loops load through asynchronous copies into shared memory (``cp.async``), counted the same way."""
    from fern.tts.csm import kernels as K

    if weight_lines is None:
        weight_lines = _weight_lines(open(K.__file__).read().splitlines())
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
        if line not in weight_lines:
            continue
        ld, cp = _LD.search(text), _CP_ASYNC.search(text)
        if ld or cp:
            nbytes = int(ld.group(1) or 1) * int(ld.group(2)) // 8 if ld else int(cp.group(1), 0)
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
        elif re.search(r"\b(?:ld|st|atom|red)\.global\b|\b(?:atom|red)\.|\bcp\.async\.c[ag]\.", line):
            events.append("access")
    if "prefetch" not in events:
        return None
    after = [nxt for cur, nxt in zip(events, events[1:] + ["end"]) if cur == "prefetch" and nxt != "prefetch"]
    return all(nxt == "arrive" for nxt in after)


# ---- SASS: what ptxas made of the PTX (disassembled by the nvdisasm Triton ships) --------------------------------
_SASS_LINE = re.compile(r'\s*//## File "([^"]+)", line (\d+)')
_SASS_LABEL = re.compile(r"^(\.L_x_\d+):")
_SASS_INST = re.compile(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;")
_SASS_REG = re.compile(r"\bR(\d+)(\.64)?\b")
_SASS_GUARD = re.compile(r"^@!?U?P\w+\s+")
_SASS_LOAD = re.compile(r"^(?:@!?U?P\w+\s+)?(LDG|LDGSTS)((?:\.\w+)*)\s")
_SASS_BACK = re.compile(r"\bBRA(?:\.\w+)*\s+(?:!?U?P\w+,\s*)?`\((\.L_x_\d+)\)")
_SASS_WAIT = re.compile(r"^DEPBAR\.LE\s+SB0,\s*(0x[0-9a-f]+|\d+)")
_LOAD_BYTES = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}  # else 4 (32-bit)


def _load_bytes(modifiers: str) -> int:
    return next((_LOAD_BYTES[m] for m in modifiers.split(".") if m in _LOAD_BYTES), 4)


def disassemble(cubin: bytes) -> str:
    """A cubin's SASS with the source line of each instruction (``nvdisasm -c -g``, the nvdisasm Triton ships)."""
    import triton

    tool = getattr(getattr(getattr(triton, "knobs", None), "nvidia", None), "nvdisasm", None)
    path = getattr(tool, "path", None)
    if path is None:  # beside ptxas, as Triton ships them
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(90) if inspect.signature(get_ptxas).parameters else get_ptxas()
        path = os.path.join(os.path.dirname(ptxas.path), "nvdisasm")
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "k.cubin")
        with open(binary, "wb") as f:
            f.write(cubin)
        return subprocess.run([path, "-c", "-g", binary], capture_output=True, text=True, check=True).stdout


def _sass_program(sass: str, source_tail: str) -> tuple[list[tuple[str, int | None]], dict[str, int]]:
    """(instruction, line in the file whose path ends with ``source_tail`` or None) in order, and label -> index."""
    insts: list[tuple[str, int | None]] = []
    labels: dict[str, int] = {}
    line = None
    for text in sass.splitlines():
        m = _SASS_LINE.match(text)
        if m:
            line = int(m.group(2)) if m.group(1).endswith(source_tail) else None
            continue
        m = _SASS_LABEL.match(text)
        if m:
            labels[m.group(1)] = len(insts)
            continue
        m = _SASS_INST.match(text)
        if m:
            insts.append((m.group(1), line))
    return insts, labels


def _registers(operands: str) -> set[int]:
    regs: set[int] = set()
    for m in _SASS_REG.finditer(operands):
        n = int(m.group(1))
        regs |= {n, n + 1} if m.group(2) else {n}
    return regs


def _peak_in_flight(body: list[tuple[str, int | None]], weight_lines: set[int], reps: int = 8) -> int:
    """The most bytes of weight loads one thread has in flight at once in ``body`` (a loop body, run ``reps`` times
    so that loads issued for later iterations count). A load into registers (LDG) is in flight from its issue until
    the first later instruction that names one of its registers (the warp waits there); an asynchronous copy into
    shared memory (LDGSTS, Triton's ``num_stages`` pipelining) until a ``DEPBAR.LE SB0, n`` leaves at most n of the
    groups committed after it (LDGDEPBAR) pending."""
    pending: list[tuple[set[int], int]] = []  # LDG: (destination registers, bytes)
    groups: list[int] = []  # LDGSTS: weight bytes per committed group, oldest first
    open_group = 0
    peak = 0
    for _ in range(reps):
        for text, line in body:
            plain = _SASS_GUARD.sub("", text)
            op, _sep, operands = plain.partition(" ")
            touched = _registers(operands)
            load = _SASS_LOAD.match(text)
            if load and load.group(1) == "LDGSTS":
                if line in weight_lines:
                    open_group += _load_bytes(load.group(2))
            elif op == "LDGDEPBAR":
                groups.append(open_group)
                open_group = 0
            elif _SASS_WAIT.match(plain):
                keep = int(_SASS_WAIT.match(plain).group(1), 0)
                del groups[:max(0, len(groups) - keep)]
            if not (load and load.group(1) == "LDG"):
                pending = [(regs, n) for regs, n in pending if not regs & touched]
            elif line in weight_lines:
                nbytes = _load_bytes(load.group(2))
                first = min(_registers(operands.split(",")[0]))
                pending.append((set(range(first, first + max(1, nbytes // 4))), nbytes))
            peak = max(peak, sum(n for _r, n in pending) + sum(groups) + open_group)
    return peak


def weight_bytes_in_flight(sass: str, weight_lines: set[int], source_tail: str) -> dict[int, int]:
    """Per source line of a weight load: the most weight bytes one thread has in flight in the innermost loop that
    issues it (the least over its copies, if ptxas duplicated the loop). A memory-bound kernel's bandwidth is at most
    bytes in flight per SM / latency (Little's law); with one program per SM, as in the persistent kernels, that is
    this figure times the program's threads."""
    insts, labels = _sass_program(sass, source_tail)
    loops = [(labels[m.group(1)], i) for i, (text, _l) in enumerate(insts)
             for m in [_SASS_BACK.search(text)] if m and labels.get(m.group(1), len(insts)) <= i]
    peaks: dict[tuple[int, int], int] = {}
    out: dict[int, int] = {}
    for i, (text, line) in enumerate(insts):
        if line not in weight_lines or not _SASS_LOAD.match(text):
            continue
        inner = min((lp for lp in loops if lp[0] <= i <= lp[1]), key=lambda lp: lp[1] - lp[0], default=None)
        span = inner or (0, len(insts) - 1)
        if span not in peaks:
            peaks[span] = _peak_in_flight(insts[span[0]:span[1] + 1], weight_lines, 8 if inner else 1)
        out[line] = min(out.get(line, peaks[span]), peaks[span])
    return out


def _phase_of(src: list[str], line: int) -> str:
    """A name for the kernel phase around source line ``line`` (1-based) of kernels.py: the comment of the
    enclosing ``if``/``elif``/``else`` branch, else the enclosing function's name."""
    indent = len(src[line - 1]) - len(src[line - 1].lstrip())
    for text in reversed(src[:line - 1]):
        stripped = text.lstrip()
        depth = len(text) - len(stripped)
        if not stripped or depth >= indent:
            continue
        indent = depth
        if stripped.startswith(("if ", "elif ", "else")) and "#" in stripped:
            return stripped.split("#", 1)[1].strip()
        if stripped.startswith("def "):
            return stripped[4:].split("(", 1)[0]
    return f"line {line}"


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
    src = open(K.__file__).read().splitlines()
    weight_lines = _weight_lines(src)
    out["weight_load_bytes"] = weight_load_widths(compiled.asm["ptx"], weight_lines)
    out["atomics_by_one_thread"] = atomics_by_one_thread(compiled.asm["ptx"])
    # the persistent kernels' PREFETCH=1 (kernels._prefetch_l2): proof that the hint survived to the PTX
    out["l2_prefetches"] = len(_PREFETCH.findall(compiled.asm["ptx"]))
    out["prefetches_then_barrier"] = prefetches_then_barrier(compiled.asm["ptx"])
    # the persistent kernels' TIMING=1 (kernels._stamp): reads of the SM's cycle counter and the GPU's timer
    out["clock_reads"] = len(re.findall(r"%clock64|%globaltimer", compiled.asm["ptx"]))
    threads = 32 * options["num_warps"]
    in_flight = weight_bytes_in_flight(disassemble(compiled.asm["cubin"]), weight_lines,
                                       os.path.join("fern", "tts", "csm", "kernels.py"))
    out["weight_kb_in_flight"] = {}
    for line, nbytes in sorted(in_flight.items()):  # per phase, the least over its loads
        phase = _phase_of(src, line)
        kb = nbytes * threads / 1024
        out["weight_kb_in_flight"][phase] = min(out["weight_kb_in_flight"].get(phase, kb), kb)
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
                            "l2_prefetches", "clock_reads"):
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
                kb = row.setdefault("weight_kb_in_flight", {})
                for phase, v in got["weight_kb_in_flight"].items():
                    kb[phase] = min(kb.get(phase, v), v)
                row["min_weight_kb_in_flight"] = min(kb.values(), default=0)
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
    p.add_argument("--sms", type=int, default=132, help="SMs, for the bytes in flight DRAM needs (H100 / H200: 132)")
    p.add_argument("--peak-tbps", type=float, default=4.8, help="DRAM bandwidth (H200: 4.8 TB/s)")
    p.add_argument("--latency-ns", type=float, default=600.0,
                   help="DRAM latency under load assumed for that figure (H100 / H200: ~500-700 ns)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("unset TRITON_INTERPRET: this compiles for the GPU, not for Triton's interpreter")
    rows = report(tuple(k for k in args.kinds.split(",") if k), tuple(m for m in args.modes.split(",") if m),
                  json.loads(args.blocks) if args.blocks else None, args.arch, 0.0 if args.greedy else 0.9)
    print(f"CSM-1B depth decoder and backbone kernels compiled for sm_{args.arch} (no GPU: resources from ptxas -v)")
    print(f"  {'mode':14s} {'weights':7s} {'kernel':24s} {'launches':>8s} {'builds':>6s} {'warps':>5s} {'regs':>4s} "
          f"{'spill st/ld B':>13s} {'stack B':>7s} {'smem B':>7s} {'weight ld B':>11s} {'L2 pf':>5s} "
          f"{'KB in flight':>12s}")
    for r in rows:
        if "error" in r:
            print(f"  {r['mode']:14s} {r['weights']:7s} {r['kernel']:24s} FAILED {r['error']}")
            continue
        print(f"  {r['mode']:14s} {r['weights']:7s} {r['kernel']:24s} {r['launches_per_frame']:8d} "
              f"{r['compilations']:6d} {r['num_warps']:5d} "
              f"{r['registers']:4d} {r['spill_store_bytes']:6d}/{r['spill_load_bytes']:<6d} {r['stack_bytes']:7d} "
              f"{r['shared_bytes']:7d} {r['min_weight_load_bytes']:11d} {r['l2_prefetches']:5d} "
              f"{r['min_weight_kb_in_flight']:12.0f}")
    need = args.peak_tbps * 1e12 * args.latency_ns * 1e-9 / args.sms / 1024
    print(f"Weight bytes one program (8 warps, one per SM) has in flight, per phase of the persistent kernels (SASS).\n"
          f"  DRAM's peak ({args.peak_tbps} TB/s, {args.latency_ns:.0f} ns, {args.sms} SMs) needs {need:.0f} KB per "
          f"SM (Little's law); a phase whose block of weights takes n times its bytes in flight waits n latencies")
    for r in rows:
        if "error" in r or r["mode"] not in ("frame", "backbone_frame"):
            continue
        for phase, kb in r["weight_kb_in_flight"].items():
            print(f"  {r['kernel']:15s} {r['weights']:5s} {kb:5.0f} KB  {phase[:90]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
