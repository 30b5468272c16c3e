"""Triton kernels for one row (batch 1) of the CSM depth decoder: 4 launches per layer, 1 per codebook head.

    K1 _norm_qkv_cache     rms-norm(h) -> q|k|v GEMV (optional in-kernel rope) -> q, k, v into the layer's buffer
    K2 _attn_o_residual    attention over <= BL cached positions, recomputed by every program, -> o-proj -> h +=
    K3 _norm_gateup_swiglu rms-norm(h) -> gate|up GEMV -> silu(g) * u to scratch
    K4 _down_residual      down GEMV -> h +=
    K5 _norm_head_sample   final rms-norm -> codebook head GEMV -> logits; the last program to finish samples the
                           token (greedy, or top-k Gumbel-max), writes it and the next step's input row into h

and the same math as one persistent launch per frame:

    _depth_frame           all 32 steps x (K1..K4 per layer + the head) as phases split over one program per SM,
                           a grid-wide barrier (atomic counter, bounded wait) after each phase, every program sampling
                           the same token so the next step's input needs no extra barrier. 1 launch instead of 543.

and for the backbone's one-row step (fern.tts.csm.fused_backbone), whose attention spans up to 2048 positions: K1
with rope, writing K/V into the backbone's own cache; _attn_split (flash-decoding: partial results per KV head and
chunk of positions); _attn_combine_o_residual (every program merges the partials, then its o-proj rows); K3; K4.
And the same as one persistent launch for all its layers:

    _backbone_frame        the input row into h, then 16 layers x those 5 phases, a grid-wide barrier after each
                           (but the last: the launch's end orders it);
                           each layer's weights and cache found by offsets from one base per kind (no stacked copy)

The kernels' bodies are jitted helpers (_qkv_rope_pairs, _attn_partial, _attn_merge_o_rows, _gateup_rows,
_down_rows; _grid_barrier, _grid_exit) that take the block to compute: a step kernel passes its program id, a
persistent kernel loops its programs over the blocks of each phase. So both run the same code, and the tests of one
cover the other's math. With PREFETCH, a persistent kernel's programs ask for their first block of the next phase's
weights into L2 before each barrier (_prefetch_l2), so that DRAM does not idle while they wait.

Why this split: a layer has four points where every output element needs the whole of a vector another program
computes (q|k|v -> attention, o -> norm, gate|up -> down, down -> next norm). Without a grid-wide barrier each such
point ends a launch. The persistent kernel waits at a barrier there instead, which is safe only because its grid is
no larger than the SM count (every program resident; a bounded wait flags the case where they are not). Work that
needs only a little shared input is recomputed instead of launched: every program redoes the rms statistic of h
(D elements) and, in K2, the whole attention over <= 32 positions (a few KB of KV from L2) rather than reading it
from a separate attention kernel.
Sampling needs all logits; it runs in the head kernel's last program (atomic counter, acquire/release), which saves
the 4 sampling launches per step that the torch path spends.

Weights may be the model dtype or int8 / float8_e4m3fn with one fp32 scale per output row (``HAS_SCALE``): the GEMV
accumulates ``q * x`` in fp32 and scales once per row. The residual stream ``h`` and all scratch vectors are fp32.

Kernels are plain functions wrapped by ``triton.jit`` at first use; Triton is imported lazily, so that tests can set
``TRITON_INTERPRET=1`` first and run every kernel on CPU tensors in Triton's interpreter (the persistent kernel as
one program: the interpreter runs programs one after another, so a barrier could not wait for a second). A
:class:`LaunchCounter` counts launches so ``fern.bench.opcount`` can report kernels per frame for this path without a
GPU; a :class:`LaunchRecorder` records them so ``fern.bench.ptx`` can compile each for sm_90 without one.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter

log = logging.getLogger(__name__)

triton = None  # imported on first use (see _import): the interpreter mode is fixed when Triton is imported
tl = None


def _import() -> bool:
    global triton, tl
    if triton is None:
        try:
            import triton as _triton
            import triton.language as _tl
        except Exception:  # noqa: BLE001 - any import failure means "no Triton"
            return False
        triton, tl = _triton, _tl
        # helpers the kernels call must be jitted functions by the time a kernel is compiled (or interpreted)
        globals().update({f.__name__: triton.jit(f) for f in _HELPERS})
    return True


def available() -> bool:
    return _import()


def interpreter_active() -> bool:
    """Whether Triton runs kernels in its interpreter (CPU tensors). Only ``TRITON_INTERPRET=1`` set before Triton is
    first imported in the process does this: Triton builds its own library functions (``tl.sum``, ``tl.zeros``...)
    for one mode at import, so the mode cannot be switched later."""
    if not _import():
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return bool(triton.knobs.runtime.interpret) and isinstance(tl.zeros, InterpretedFunction)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# ---- kernels (plain functions; see _kernel) ---------------------------------------------------------------------

def _pick_token(logits, vm, noise, top_k, SAMPLE: tl.constexpr):
    # argmax; or the top-k set by bisection on order-preserving int keys (exact, no sort), then Gumbel-max inside it
    # with one noise value per vocabulary entry: the same distribution as torch.topk + Gumbel-max by rank.
    # A helper both sampling kernels call (jitted by _import, so the kernels find it compiled)
    if SAMPLE:
        bits = logits.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)
        key = tl.where(vm, key, -(2**31) - 1)
        lo = tl.min(tl.where(vm, key, 2**31), axis=0)
        hi = tl.max(key, axis=0)
        for _ in range(33):
            mid = lo + (hi - lo + 1) // 2
            ok = tl.sum((key >= mid).to(tl.int32), axis=0) >= top_k
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid - 1)
        c = tl.argmax(tl.where(vm & (key >= lo), logits + noise, float("-inf")), axis=0, tie_break_left=True)
    else:
        c = tl.argmax(logits, axis=0, tie_break_left=True)
    return c.to(tl.int64)


def _add_rows(h_ptr, rows, rm, acc, s_ptr, HAS_SCALE: tl.constexpr, MOD: tl.constexpr):
    # a GEMV's rows (times their scales, for quantized weights) added into the residual stream. MOD: the cache
    # modifier of loads of what other programs of the same launch wrote (".cg", past L1, in the persistent kernels;
    # a pipelined loop's copies of such data go through cp.async, which may cache in L1: safe, as each grid
    # barrier's acquire invalidates L1 (CCTL.IVALL in the SASS) before the bar.sync that releases the program)
    if HAS_SCALE:
        acc = acc * tl.load(s_ptr + rows, mask=rm, other=0.0)
    hv = tl.load(h_ptr + rows, mask=rm, other=0.0, cache_modifier=MOD)
    tl.store(h_ptr + rows, hv + acc, mask=rm)


def _rstd(x_ptr, eps, D: tl.constexpr, BK: tl.constexpr, MOD: tl.constexpr):
    # 1 / rms of the D-vector at x_ptr, for an rms-norm (every program of a GEMV recomputes it: D floats from L2)
    ss = tl.zeros([BK], dtype=tl.float32)
    for k0 in range(0, D, BK):
        k = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + k, mask=k < D, other=0.0, cache_modifier=MOD).to(tl.float32)
        ss += x * x
    return 1.0 / tl.sqrt(tl.sum(ss, axis=0) / D + eps)


def _qkv_rope_pairs(blk, x_ptr, rstd, nw_ptr, w_ptr, s_ptr, q_ptr, kv_ptr, pos, cos_ptr, sin_ptr,
                    D: tl.constexpr, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, QL: tl.constexpr,
                    L: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, ROPE: tl.constexpr,
                    HAS_SCALE: tl.constexpr, MOD: tl.constexpr, STAGES: tl.constexpr):
    # block ``blk`` of BP row pairs (j, j + HD/2) of the q|k|v weight applied to rms-norm(x), so rope's partner rows
    # are in the same program. q goes to (NH, QL, HD) at row ``pos`` (QL > 1: the depth decoder's buffer, which
    # keeps every position's q) or to (NH, HD) (QL == 1); k and v to the cache (2 * NKV, L, HD) at row ``pos``, each
    # in its buffer's dtype. STAGES: see _gateup_rows
    HALF: tl.constexpr = HD // 2
    NP: tl.constexpr = (NH + 2 * NKV) * HALF
    p = blk * BP + tl.arange(0, BP)
    pm = p < NP
    head = p // HALF
    j = p % HALF
    rows1 = head * HD + j
    rows2 = rows1 + HALF
    a = tl.zeros([BP], dtype=tl.float32)
    b = tl.zeros([BP], dtype=tl.float32)
    for k0 in tl.range(0, D, BK, num_stages=STAGES):
        k = k0 + tl.arange(0, BK)
        km = k < D
        x = tl.load(x_ptr + k, mask=km, other=0.0, cache_modifier=MOD).to(tl.float32) * rstd \
            * tl.load(nw_ptr + k, mask=km, other=0.0).to(tl.float32)
        m2 = pm[:, None] & km[None, :]
        w1 = tl.load(w_ptr + rows1[:, None] * D + k[None, :], mask=m2, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + rows2[:, None] * D + k[None, :], mask=m2, other=0.0).to(tl.float32)
        a += tl.sum(w1 * x[None, :], axis=1)
        b += tl.sum(w2 * x[None, :], axis=1)
    if HAS_SCALE:
        a = a * tl.load(s_ptr + rows1, mask=pm, other=0.0)
        b = b * tl.load(s_ptr + rows2, mask=pm, other=0.0)
    if ROPE:
        rot = pm & (head < NH + NKV)  # q and k heads; v is not rotated
        c1 = tl.load(cos_ptr + pos * HD + j, mask=rot, other=1.0).to(tl.float32)
        s1 = tl.load(sin_ptr + pos * HD + j, mask=rot, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + pos * HD + HALF + j, mask=rot, other=1.0).to(tl.float32)
        s2 = tl.load(sin_ptr + pos * HD + HALF + j, mask=rot, other=0.0).to(tl.float32)
        a, b = a * c1 - b * s1, b * c2 + a * s2
    is_q = head < NH
    qm = pm & is_q
    if QL == 1:
        base = q_ptr + head * HD + j
    else:
        base = q_ptr + (head * QL + pos) * HD + j
    tl.store(base, a.to(q_ptr.dtype.element_ty), mask=qm)
    tl.store(base + HALF, b.to(q_ptr.dtype.element_ty), mask=qm)
    kvm = pm & ~is_q
    base = kv_ptr + ((head - NH) * L + pos) * HD + j
    tl.store(base, a.to(kv_ptr.dtype.element_ty), mask=kvm)
    tl.store(base + HALF, b.to(kv_ptr.dtype.element_ty), mask=kvm)


def _attn_partial(g, c, q_ptr, kv_ptr, pos, part_ptr, scaling, NH: tl.constexpr, NKV: tl.constexpr,
                  HD: tl.constexpr, L: tl.constexpr, BT: tl.constexpr, BHD: tl.constexpr, MOD: tl.constexpr):
    # flash-decoding's partial results of KV head g over positions [c * BT, c * BT + BT) up to ``pos``, for each
    # query head of the group (q: (NH, HD)): (running max, sum of exp, exp-weighted sum of V), HD + 2 floats at
    # part[head, c]. Call only for chunks that start at or before ``pos``
    REP: tl.constexpr = NH // NKV
    NC: tl.constexpr = (L + BT - 1) // BT
    t = c * BT + tl.arange(0, BT)
    tm = t <= pos
    d = tl.arange(0, BHD)
    dm = d < HD
    m2 = tm[:, None] & dm[None, :]
    kt = tl.load(kv_ptr + (g * L + t[:, None]) * HD + d[None, :], mask=m2, other=0.0,
                 cache_modifier=MOD).to(tl.float32)
    vt = tl.load(kv_ptr + ((NKV + g) * L + t[:, None]) * HD + d[None, :], mask=m2, other=0.0,
                 cache_modifier=MOD).to(tl.float32)
    for r in range(REP):
        head = g * REP + r
        q = tl.load(q_ptr + head * HD + d, mask=dm, other=0.0, cache_modifier=MOD)
        s = tl.where(tm, tl.sum(kt * q[None, :], axis=1) * scaling, float("-inf"))
        m = tl.max(s, axis=0)
        p = tl.exp(s - m)
        out = part_ptr + (head * NC + c) * (HD + 2)
        tl.store(out, m)
        tl.store(out + 1, tl.sum(p, axis=0))
        tl.store(out + 2 + d, tl.sum(vt * p[:, None], axis=0), mask=dm)


def _attn_merge_o_rows(blk, part_ptr, pos, w_ptr, s_ptr, h_ptr, D: tl.constexpr, NH: tl.constexpr,
                       HD: tl.constexpr, L: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BHD: tl.constexpr,
                       BN: tl.constexpr, HAS_SCALE: tl.constexpr, MOD: tl.constexpr, STAGES: tl.constexpr):
    # merges the partial attention results of every head (a few KB from L2: cheaper than a launch or a barrier),
    # then block ``blk`` of BN rows of the o-projection, added into the residual stream. STAGES > 1: the loads of
    # STAGES - 1 heads ahead in flight (see _gateup_rows), where one head at a time costs a round trip per head
    NC: tl.constexpr = (L + BT - 1) // BT
    rows = blk * BN + tl.arange(0, BN)
    rm = rows < D
    c = tl.arange(0, BC)
    cm = c <= pos // BT
    d = tl.arange(0, BHD)
    dm = d < HD
    acc = tl.zeros([BN], dtype=tl.float32)
    for head in tl.range(NH, num_stages=STAGES):
        part = part_ptr + (head * NC + c) * (HD + 2)
        m = tl.load(part, mask=cm, other=float("-inf"), cache_modifier=MOD)
        scale = tl.where(cm, tl.exp(m - tl.max(m, axis=0)), 0.0)
        total = tl.sum(tl.load(part + 1, mask=cm, other=0.0, cache_modifier=MOD) * scale, axis=0)
        vs = tl.load(part[:, None] + 2 + d[None, :], mask=cm[:, None] & dm[None, :], other=0.0, cache_modifier=MOD)
        o = tl.sum(vs * scale[:, None], axis=0) / total
        acc += _o_rows(w_ptr, rows, rm, head, d, dm, o, NH, HD)
    _add_rows(h_ptr, rows, rm, acc, s_ptr, HAS_SCALE, MOD)


def _gateup_rows(blk, x_ptr, rstd, nw_ptr, w_ptr, s_ptr, act_ptr, D: tl.constexpr, FF: tl.constexpr,
                 BN: tl.constexpr, BK: tl.constexpr, HAS_SCALE: tl.constexpr, MOD: tl.constexpr,
                 STAGES: tl.constexpr):
    # block ``blk`` of BN rows of gate and of up applied to rms-norm(x) -> silu(gate) * up to act. STAGES > 1: the
    # K loop's loads go through shared memory, STAGES - 1 tiles ahead (Triton's pipelining: cp.async), so that a
    # program keeps enough bytes in flight to cover DRAM's latency (fern.bench.ptx reports them per phase); the
    # reduction after each tile's multiply waits for every warp, so without it a warp has one tile in flight
    rows = blk * BN + tl.arange(0, BN)
    rm = rows < FF
    g = tl.zeros([BN], dtype=tl.float32)
    u = tl.zeros([BN], dtype=tl.float32)
    for k0 in tl.range(0, D, BK, num_stages=STAGES):
        k = k0 + tl.arange(0, BK)
        km = k < D
        x = tl.load(x_ptr + k, mask=km, other=0.0, cache_modifier=MOD) * rstd \
            * tl.load(nw_ptr + k, mask=km, other=0.0).to(tl.float32)
        m2 = rm[:, None] & km[None, :]
        wg = tl.load(w_ptr + rows[:, None] * D + k[None, :], mask=m2, other=0.0).to(tl.float32)
        wu = tl.load(w_ptr + (FF + rows[:, None]) * D + k[None, :], mask=m2, other=0.0).to(tl.float32)
        g += tl.sum(wg * x[None, :], axis=1)
        u += tl.sum(wu * x[None, :], axis=1)
    if HAS_SCALE:
        g = g * tl.load(s_ptr + rows, mask=rm, other=0.0)
        u = u * tl.load(s_ptr + FF + rows, mask=rm, other=0.0)
    tl.store(act_ptr + rows, g / (1.0 + tl.exp(-g)) * u, mask=rm)


def _down_rows(blk, act_ptr, w_ptr, s_ptr, h_ptr, D: tl.constexpr, FF: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr, HAS_SCALE: tl.constexpr, MOD: tl.constexpr, STAGES: tl.constexpr):
    # block ``blk`` of BN rows of the down projection of act, added into the residual stream. STAGES: see
    # _gateup_rows
    rows = blk * BN + tl.arange(0, BN)
    rm = rows < D
    acc = tl.zeros([BN], dtype=tl.float32)
    for k0 in tl.range(0, FF, BK, num_stages=STAGES):
        k = k0 + tl.arange(0, BK)
        km = k < FF
        x = tl.load(act_ptr + k, mask=km, other=0.0, cache_modifier=MOD)
        w = tl.load(w_ptr + rows[:, None] * FF + k[None, :], mask=rm[:, None] & km[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)
    _add_rows(h_ptr, rows, rm, acc, s_ptr, HAS_SCALE, MOD)


def _grid_barrier(sync_ptr, target, failed, MAX_SPINS: tl.constexpr):
    # grid-wide barrier of a persistent kernel: this CTA's stores before one thread's release; everyone's after the
    # acquire, once ``target`` arrivals are counted. A bounded wait: programs that are not all resident would
    # otherwise hang the GPU; a program that gave up once waits no more, and the returned flag tells the host
    # (FusedDepth.barrier_timed_out / FusedBackbone.barrier_timed_out, through _grid_exit)
    tl.debug_barrier()
    tl.atomic_add(sync_ptr, 1, sem="release")
    spins = failed * 0
    while (tl.atomic_add(sync_ptr, 0, sem="acquire") < target) & (spins < MAX_SPINS) & (failed == 0):
        spins += 1
    failed = failed | (spins >= MAX_SPINS).to(tl.int32)
    tl.debug_barrier()
    return failed


def _clock(pid, GLOBAL: tl.constexpr):
    # this SM's cycle counter (%clock64), or with GLOBAL the GPU's nanosecond timer (%globaltimer, which may tick only
    # every microsecond: it calibrates the cycles over a whole launch). PTX: GPU only
    if GLOBAL:
        t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [pid], dtype=tl.int64, is_pure=False,
                                      pack=1)
    else:
        t = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [pid], dtype=tl.int64, is_pure=False, pack=1)
    return t


def _stamp(times_ptr, slot, pid):
    # program 0's cycle count into times_ptr[slot] (TIMING=1): where a persistent kernel's time goes, phase by phase
    # (FusedDepth.phase_times / FusedBackbone.phase_times). Program 0 has a block in every phase
    t = _clock(pid, False)
    if pid == 0:
        tl.store(times_ptr + slot, t)


def _stamp_ends(times_ptr, slot, pid):
    # the launch's start or end for the calibration: the nanosecond timer at slot, the cycle count at slot + 1
    t = _clock(pid, True)
    c = _clock(pid, False)
    if pid == 0:
        tl.store(times_ptr + slot, t)
        tl.store(times_ptr + slot + 1, c)


def _timed_barrier(sync_ptr, target, failed, MAX_SPINS: tl.constexpr, times_ptr, pid, TIMING: tl.constexpr):
    # _grid_barrier (the target-th arrival is the barrier's number times the grid), with TIMING program 0's clock
    # before and after it: barrier n (from 1) at slots 2n and 2n + 1, after the launch's start at 0 and 1
    if TIMING:
        _stamp(times_ptr, 2 * (target // tl.num_programs(0)), pid)
    failed = _grid_barrier(sync_ptr, target, failed, MAX_SPINS)
    if TIMING:
        _stamp(times_ptr, 2 * (target // tl.num_programs(0)) + 1, pid)
    return failed


def _grid_exit(sync_ptr, failed):
    # a persistent kernel's end: flag a barrier that gave up (sync[2]); the last program out resets the counters
    # (sync[0] arrivals, sync[1] programs done) for the next launch or graph replay (all have left every barrier),
    # and leaves the number of barriers passed in sync[3] (every program arrives at each, waiting or not)
    if failed != 0:
        tl.atomic_xchg(sync_ptr + 2, 1)
    tl.debug_barrier()
    done = tl.atomic_add(sync_ptr + 1, 1, sem="acq_rel")
    if done == tl.num_programs(0) - 1:
        arrivals = tl.atomic_xchg(sync_ptr, 0)
        tl.atomic_xchg(sync_ptr + 1, 0)
        tl.atomic_xchg(sync_ptr + 3, arrivals // tl.num_programs(0))


def _prefetch_l2(ptr, rows, rm, row_stride, COLS: tl.constexpr):
    # asks DRAM for rows ``rows`` (COLS elements each, ``row_stride`` apart) into L2, one PTX prefetch per 128-byte
    # line, and returns at once. A persistent kernel issues it for its next phase's weights before a grid barrier,
    # so that DRAM works while the programs wait ("No Bubbles"); the loads after the barrier hit L2. A hint: it
    # changes no result. GPU only (Triton's interpreter runs no PTX): callers pass PREFETCH=0 there
    LINE: tl.constexpr = 1024 // ptr.dtype.element_ty.primitive_bitwidth  # elements per 128-byte line
    # lines per row, rounded up to a power of two (tl.arange's rule; the mask drops the extra ones)
    N0: tl.constexpr = (COLS + LINE - 1) // LINE - 1
    N1: tl.constexpr = N0 | (N0 >> 1)
    N2: tl.constexpr = N1 | (N1 >> 2)
    N3: tl.constexpr = N2 | (N2 >> 4)
    N4: tl.constexpr = N3 | (N3 >> 8)
    NLINES: tl.constexpr = (N4 | (N4 >> 16)) + 1
    lines = tl.arange(0, NLINES) * LINE
    m = rm[:, None] & (lines[None, :] < COLS)
    at = tl.where(m, ptr + rows[:, None] * row_stride + lines[None, :], ptr)  # masked: the tensor's first line
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [at], dtype=tl.int32,
                              is_pure=False, pack=1)


def _prefetch_block(w_ptr, blk, BN: tl.constexpr, N: tl.constexpr, COLS: tl.constexpr):
    # rows [blk * BN, blk * BN + BN) of an (N, COLS) row-major weight: block ``blk`` of a GEMV phase, into L2
    rows = blk * BN + tl.arange(0, BN)
    _prefetch_l2(w_ptr, rows, rows < N, COLS, COLS)


def _prefetch_qkv_pairs(w_ptr, blk, D: tl.constexpr, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr,
                        BP: tl.constexpr):
    # the q|k|v weight rows of block ``blk`` of _qkv_rope_pairs: both rows of each of its BP pairs
    HALF: tl.constexpr = HD // 2
    pp = blk * BP + tl.arange(0, BP)
    rows = pp // HALF * HD + pp % HALF
    pm = pp < (NH + 2 * NKV) * HALF
    _prefetch_l2(w_ptr, rows, pm, D, D)
    _prefetch_l2(w_ptr, rows + HALF, pm, D, D)


def _prefetch_depth_phase(ph, p, blk, qkv_ptr, o_ptr, gu_ptr, dn_ptr, hw_ptr, stride_hh, stride_hn,
                          D: tl.constexpr, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, FF: tl.constexpr,
                          V: tl.constexpr, NL: tl.constexpr, BP: tl.constexpr, BNO: tl.constexpr,
                          BNG: tl.constexpr, BND: tl.constexpr, BNH: tl.constexpr):
    # block ``blk`` of phase ``ph`` of step ``p`` of _depth_frame, into L2: its weight rows (see _prefetch_l2)
    layer = ph // 4
    kind = ph % 4
    if ph == 4 * NL:
        if p > 0:  # codebook p's head, stored (vocab, hidden) contiguous (FusedDepth.head_all): rows of D
            n = blk * BNH + tl.arange(0, BNH)
            _prefetch_l2(hw_ptr + (p - 1) * stride_hh, n, n < V, stride_hn, D)
    elif kind == 0:
        _prefetch_qkv_pairs(qkv_ptr + layer * ((NH + 2 * NKV) * HD * D), blk, D, NH, NKV, HD, BP)
    elif kind == 1:
        _prefetch_block(o_ptr + layer * (D * NH * HD), blk, BNO, D, NH * HD)
    elif kind == 2:  # gate rows, then up rows
        _prefetch_block(gu_ptr + layer * (2 * FF * D), blk, BNG, FF, D)
        _prefetch_block(gu_ptr + layer * (2 * FF * D) + FF * D, blk, BNG, FF, D)
    else:
        _prefetch_block(dn_ptr + layer * (D * FF), blk, BND, D, FF)


def _o_rows(w_ptr, rows, rm, head, d, dm, o, NH: tl.constexpr, HD: tl.constexpr):
    # the o-projection's rows ``rows`` applied to one head's attention output o (BHD,)
    w = tl.load(w_ptr + rows[:, None] * (NH * HD) + head * HD + d[None, :],
                mask=rm[:, None] & dm[None, :], other=0.0).to(tl.float32)
    return tl.sum(w * o[None, :], axis=1)


def _norm_qkv_cache(h_ptr, nw_ptr, eps, w_ptr, s_ptr, q_ptr, kv_ptr, pos_ptr, cos_ptr, sin_ptr,
                    D: tl.constexpr, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, QL: tl.constexpr,
                    L: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, ROPE: tl.constexpr,
                    HAS_SCALE: tl.constexpr):
    # one program: BP row pairs of the q|k|v weight (see _qkv_rope_pairs). The depth decoder passes one
    # (NH + 2 * NKV, L, HD) buffer split in two (QL = L: the q of a position stays readable by the attention kernel,
    # which masks positions > pos); the backbone a (NH, HD) q scratch (QL = 1) and its model-dtype KV cache, which
    # its torch prefill writes too
    rstd = _rstd(h_ptr, eps, D, BK, "")
    _qkv_rope_pairs(tl.program_id(0), h_ptr, rstd, nw_ptr, w_ptr, s_ptr, q_ptr, kv_ptr, tl.load(pos_ptr), cos_ptr,
                    sin_ptr, D, NH, NKV, HD, QL, L, BP, BK, ROPE, HAS_SCALE, "", 1)


def _attn_split(q_ptr, kv_ptr, pos_ptr, part_ptr, scaling,
                NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
                BHD: tl.constexpr):
    # The backbone's attention over up to L cached positions, split (flash-decoding): program (g, c) takes KV head g
    # and chunk c of BT positions (see _attn_partial). Chunks past ``pos`` write nothing (the grid is fixed, for CUDA
    # graphs; the combine reads chunks 0..pos // BT only)
    c = tl.program_id(1)
    pos = tl.load(pos_ptr)
    if c * BT <= pos:
        _attn_partial(tl.program_id(0), c, q_ptr, kv_ptr, pos, part_ptr, scaling, NH, NKV, HD, L, BT, BHD, "")


def _attn_combine_o_residual(part_ptr, pos_ptr, w_ptr, s_ptr, h_ptr,
                             D: tl.constexpr, NH: tl.constexpr, HD: tl.constexpr, L: tl.constexpr,
                             BT: tl.constexpr, BC: tl.constexpr, BHD: tl.constexpr, BN: tl.constexpr,
                             HAS_SCALE: tl.constexpr):
    # every program merges the partial attention results of every head, then adds its BN rows of the o-projection
    _attn_merge_o_rows(tl.program_id(0), part_ptr, tl.load(pos_ptr), w_ptr, s_ptr, h_ptr, D, NH, HD, L, BT, BC, BHD,
                       BN, HAS_SCALE, "", 1)


def _attn_o_residual(buf_ptr, pos_ptr, w_ptr, s_ptr, h_ptr, scaling,
                     D: tl.constexpr, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr,
                     L: tl.constexpr, BL: tl.constexpr, BHD: tl.constexpr, BN: tl.constexpr,
                     HAS_SCALE: tl.constexpr):
    REP: tl.constexpr = NH // NKV
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    rm = rows < D
    pos = tl.load(pos_ptr)
    t = tl.arange(0, BL)
    tm = t <= pos
    d = tl.arange(0, BHD)
    dm = d < HD
    m2 = tm[:, None] & dm[None, :]
    acc = tl.zeros([BN], dtype=tl.float32)
    for g in range(NKV):
        kt = tl.load(buf_ptr + ((NH + g) * L + t[:, None]) * HD + d[None, :], mask=m2, other=0.0).to(tl.float32)
        vt = tl.load(buf_ptr + ((NH + NKV + g) * L + t[:, None]) * HD + d[None, :], mask=m2,
                     other=0.0).to(tl.float32)
        for r in range(REP):
            head = g * REP + r
            q = tl.load(buf_ptr + (head * L + pos) * HD + d, mask=dm, other=0.0).to(tl.float32)
            s = tl.sum(kt * q[None, :], axis=1) * scaling
            s = tl.where(tm, s, float("-inf"))
            p = tl.exp(s - tl.max(s, axis=0))
            p = p / tl.sum(p, axis=0)
            o = tl.sum(vt * p[:, None], axis=0)  # (BHD,)
            acc += _o_rows(w_ptr, rows, rm, head, d, dm, o, NH, HD)
    _add_rows(h_ptr, rows, rm, acc, s_ptr, HAS_SCALE, "")


def _norm_gateup_swiglu(h_ptr, nw_ptr, eps, w_ptr, s_ptr, act_ptr,
                        D: tl.constexpr, FF: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        HAS_SCALE: tl.constexpr):
    rstd = _rstd(h_ptr, eps, D, BK, "")
    _gateup_rows(tl.program_id(0), h_ptr, rstd, nw_ptr, w_ptr, s_ptr, act_ptr, D, FF, BN, BK, HAS_SCALE, "", 1)


def _down_residual(act_ptr, w_ptr, s_ptr, h_ptr,
                   D: tl.constexpr, FF: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   HAS_SCALE: tl.constexpr):
    _down_rows(tl.program_id(0), act_ptr, w_ptr, s_ptr, h_ptr, D, FF, BN, BK, HAS_SCALE, "", 1)


def _norm_head_sample(h_ptr, nw_ptr, eps, w_ptr, stride_wk, stride_wn, s_ptr, logits_ptr, counter_ptr, noise_ptr,
                      top_k, code_ptr, table_ptr, force_ptr,
                      D: tl.constexpr, V: tl.constexpr, VP: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr, HAS_SCALE: tl.constexpr, SAMPLE: tl.constexpr,
                      WRITE_NEXT: tl.constexpr, FORCE: tl.constexpr):
    pid = tl.program_id(0)
    n = pid * BN + tl.arange(0, BN)
    nm = n < V
    rstd = _rstd(h_ptr, eps, D, BK, "")
    acc = tl.zeros([BN], dtype=tl.float32)
    for k0 in range(0, D, BK):
        k = k0 + tl.arange(0, BK)
        km = k < D
        x = tl.load(h_ptr + k, mask=km, other=0.0) * rstd * tl.load(nw_ptr + k, mask=km, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + k[:, None] * stride_wk + n[None, :] * stride_wn, mask=km[:, None] & nm[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(w * x[:, None], axis=0)
    if HAS_SCALE:
        acc = acc * tl.load(s_ptr + n, mask=nm, other=0.0)
    tl.store(logits_ptr + n, acc, mask=nm)
    # the barrier orders every thread's stores (and reads of h) before the one thread that counts; acq_rel makes
    # them visible to the program that counts last, which reads the logits past L1 (.cg; PTX allows no
    # .volatile with .cg, and the acquire already orders the loads after the other programs' stores)
    tl.debug_barrier()
    done = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    if done == tl.num_programs(0) - 1:
        v = tl.arange(0, VP)
        vm = v < V
        logits = tl.load(logits_ptr + v, mask=vm, other=float("-inf"), cache_modifier=".cg")
        if SAMPLE:
            noise = tl.load(noise_ptr + v, mask=vm, other=0.0)
        else:
            noise = logits
        c = _pick_token(logits, vm, noise, top_k, SAMPLE)
        tl.store(code_ptr, c)
        if WRITE_NEXT:
            if FORCE:  # teacher forcing (agreement figures): the next input is the given token, not the sampled one
                c = tl.load(force_ptr)
            for k0 in range(0, D, BK):
                k = k0 + tl.arange(0, BK)
                km = k < D
                row = tl.load(table_ptr + c * D + k, mask=km, other=0.0).to(tl.float32)
                tl.store(h_ptr + k, row, mask=km)
        tl.atomic_xchg(counter_ptr, 0)  # ready for the next launch (and the next graph replay)


def _depth_frame(x_ptr, tab_ptr, code_ptr, force_ptr, noise_ptr, top_k,
                 qkv_ptr, qkv_s, o_ptr, o_s, gu_ptr, gu_s, dn_ptr, dn_s, hw_ptr, hw_s, stride_hh, stride_hk, stride_hn,
                 n1_ptr, n2_ptr, nf_ptr, eps, eps_f, cos_ptr, sin_ptr, scaling,
                 buf_ptr, h_ptr, act_ptr, logits_ptr, sync_ptr, times_ptr,
                 D: tl.constexpr, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, FF: tl.constexpr,
                 V: tl.constexpr, VP: tl.constexpr, NL: tl.constexpr, L: tl.constexpr,
                 BP: tl.constexpr, BKA: tl.constexpr, BNO: tl.constexpr, BNG: tl.constexpr, BKG: tl.constexpr,
                 BND: tl.constexpr, BKD: tl.constexpr, BNH: tl.constexpr, BKH: tl.constexpr,
                 BL: tl.constexpr, BHD: tl.constexpr, BH: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
                 HAS_SCALE: tl.constexpr, SAMPLE: tl.constexpr, FORCE: tl.constexpr, MAX_SPINS: tl.constexpr,
                 PREFETCH: tl.constexpr, SA: tl.constexpr, SG: tl.constexpr, SD: tl.constexpr,
                 TIMING: tl.constexpr):
    # The whole depth decoder of a frame in one launch: L steps x (4 phases per layer + the head), every phase split
    # over all programs, a grid-wide barrier after each (the programs must all be resident: grid <= SMs). See
    # FusedDepth (mode "frame") for the layout of the arguments; the phases are the step kernels' math. SA / SG /
    # SD: pipeline stages of the q|k|v, gate|up and down loops (see _gateup_rows). TIMING: program 0's clock after
    # each phase's work and after its barrier into times_ptr (_timed_barrier; the launch's end after the last)
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    if TIMING:
        _stamp_ends(times_ptr, 0, pid)
    HALF: tl.constexpr = HD // 2
    NQ: tl.constexpr = NH + 2 * NKV
    NP: tl.constexpr = NQ * HALF
    REP: tl.constexpr = NH // NKV
    dd = tl.arange(0, BD)
    dm = dd < D
    c = tl.load(code_ptr)  # codebook 0, from the backbone
    failed = pid * 0
    for p in range(L):
        # this step's input row: the backbone's two rows at positions 0 and 1, later the embedding (projected) of
        # the token the previous step sampled. Layer 0 reads it where the other layers read the residual stream h
        src = tl.where(p < 2, x_ptr + p * D, tab_ptr + ((p - 1) * V + c) * D)
        for ph in range(4 * NL + 1):
            layer = ph // 4
            kind = ph % 4
            first = layer == 0
            later = layer > 0
            # the rms statistic of what the phase's norm reads: layer 0's q|k|v reads the input row, every other norm
            # the residual stream h. Attention and down have no norm, and must not read h: other programs write it
            norm = (kind == 0) | (kind == 2) | (ph == 4 * NL)
            from_src = first & (kind == 0)
            xr = tl.load(src + dd, mask=dm & from_src, other=0.0).to(tl.float32) \
                + tl.load(h_ptr + dd, mask=dm & norm & ~from_src, other=0.0, cache_modifier=".cg")
            rstd = 1.0 / tl.sqrt(tl.sum(xr * xr, axis=0) / D + tl.where(ph == 4 * NL, eps_f, eps))
            if ph == 4 * NL:
                if p > 0:  # head p-1: final norm -> logits of codebook p
                    hw = hw_ptr + (p - 1) * stride_hh
                    for blk in range(pid, tl.cdiv(V, BNH), G):
                        n = blk * BNH + tl.arange(0, BNH)
                        nm = n < V
                        acc = tl.zeros([BNH], dtype=tl.float32)
                        for k0 in range(0, D, BKH):
                            k = k0 + tl.arange(0, BKH)
                            km = k < D
                            x = tl.load(h_ptr + k, mask=km, other=0.0, cache_modifier=".cg") * rstd \
                                * tl.load(nf_ptr + k, mask=km, other=0.0).to(tl.float32)
                            w = tl.load(hw + k[:, None] * stride_hk + n[None, :] * stride_hn,
                                        mask=km[:, None] & nm[None, :], other=0.0).to(tl.float32)
                            acc += tl.sum(w * x[:, None], axis=0)
                        if HAS_SCALE:
                            acc = acc * tl.load(hw_s + (p - 1) * V + n, mask=nm, other=0.0)
                        tl.store(logits_ptr + n, acc, mask=nm)
            elif kind == 0:  # norm -> q|k|v of position p (rope on q and k) -> this layer's cache rows
                w_l = qkv_ptr + layer * (NQ * HD * D)
                for blk in range(pid, tl.cdiv(NP, BP), G):
                    pp = blk * BP + tl.arange(0, BP)
                    pm = pp < NP
                    head = pp // HALF
                    j = pp % HALF
                    rows1 = head * HD + j
                    rows2 = rows1 + HALF
                    a = tl.zeros([BP], dtype=tl.float32)
                    b = tl.zeros([BP], dtype=tl.float32)
                    for k0 in tl.range(0, D, BKA, num_stages=SA):
                        k = k0 + tl.arange(0, BKA)
                        km = k < D
                        x = (tl.load(src + k, mask=km & first, other=0.0).to(tl.float32)
                             + tl.load(h_ptr + k, mask=km & later, other=0.0, cache_modifier=".cg")) * rstd \
                            * tl.load(n1_ptr + layer * D + k, mask=km, other=0.0).to(tl.float32)
                        m2 = pm[:, None] & km[None, :]
                        w1 = tl.load(w_l + rows1[:, None] * D + k[None, :], mask=m2, other=0.0).to(tl.float32)
                        w2 = tl.load(w_l + rows2[:, None] * D + k[None, :], mask=m2, other=0.0).to(tl.float32)
                        a += tl.sum(w1 * x[None, :], axis=1)
                        b += tl.sum(w2 * x[None, :], axis=1)
                    if HAS_SCALE:
                        a = a * tl.load(qkv_s + layer * (NQ * HD) + rows1, mask=pm, other=0.0)
                        b = b * tl.load(qkv_s + layer * (NQ * HD) + rows2, mask=pm, other=0.0)
                    rot = pm & (head < NH + NKV)  # q and k heads; v is not rotated
                    c1 = tl.load(cos_ptr + p * HD + j, mask=rot, other=1.0).to(tl.float32)
                    s1 = tl.load(sin_ptr + p * HD + j, mask=rot, other=0.0).to(tl.float32)
                    c2 = tl.load(cos_ptr + p * HD + HALF + j, mask=rot, other=1.0).to(tl.float32)
                    s2 = tl.load(sin_ptr + p * HD + HALF + j, mask=rot, other=0.0).to(tl.float32)
                    a, b = a * c1 - b * s1, b * c2 + a * s2
                    base = buf_ptr + ((layer * NQ + head) * L + p) * HD + j
                    tl.store(base, a, mask=pm)
                    tl.store(base + HALF, b, mask=pm)
            elif kind == 1:  # attention over positions <= p (recomputed by every program) -> o-proj -> residual
                w_l = o_ptr + layer * (D * NH * HD)
                bl = buf_ptr + layer * (NQ * L * HD)
                t = tl.arange(0, BL)
                tm = t <= p
                e = tl.arange(0, BHD)
                em = e < HD
                m2 = tm[:, None] & em[None, :]
                hh3 = tl.arange(0, BH)
                rr = tl.arange(0, BR)
                for blk in range(pid, tl.cdiv(D, BNO), G):
                    rows = blk * BNO + tl.arange(0, BNO)
                    rm = rows < D
                    # the block's weights for every head, loaded before the attention math: their latency hides
                    # behind it, where one head's weights at a time would cost a DRAM round trip per head
                    w = tl.load(w_l + rows[:, None, None] * (NH * HD) + hh3[None, :, None] * HD + e[None, None, :],
                                mask=rm[:, None, None] & (hh3 < NH)[None, :, None] & em[None, None, :], other=0.0)
                    o_all = tl.zeros([BH, BHD], dtype=tl.float32)
                    for g in range(NKV):
                        kt = tl.load(bl + ((NH + g) * L + t[:, None]) * HD + e[None, :], mask=m2, other=0.0,
                                     cache_modifier=".cg")
                        vt = tl.load(bl + ((NH + NKV + g) * L + t[:, None]) * HD + e[None, :], mask=m2, other=0.0,
                                     cache_modifier=".cg")
                        # the group's REP query heads loaded at once (loaded head by head, each was one more L2
                        # round trip in the chain of small reductions: 14.2 us of work in this phase on the H200,
                        # 13.1 now; one [REP, positions] softmax per group instead ran slower there, 7.29 ms/frame
                        # against 7.07, near the register cap)
                        q3 = tl.load(bl + ((g * REP + rr[:, None]) * L + p) * HD + e[None, :],
                                     mask=(rr < REP)[:, None] & em[None, :], other=0.0, cache_modifier=".cg")
                        for r in range(REP):
                            q = tl.sum(tl.where((rr == r)[:, None], q3, 0.0), axis=0)
                            s = tl.where(tm, tl.sum(kt * q[None, :], axis=1) * scaling, float("-inf"))
                            pr = tl.exp(s - tl.max(s, axis=0))
                            pr = pr / tl.sum(pr, axis=0)
                            o = tl.sum(vt * pr[:, None], axis=0)
                            o_all = tl.where((hh3 == g * REP + r)[:, None], o[None, :], o_all)
                    acc = tl.sum(tl.sum(w.to(tl.float32) * o_all[None, :, :], axis=2), axis=1)
                    if HAS_SCALE:
                        acc = acc * tl.load(o_s + layer * D + rows, mask=rm, other=0.0)
                    res = tl.load(src + rows, mask=rm & first, other=0.0).to(tl.float32) \
                        + tl.load(h_ptr + rows, mask=rm & later, other=0.0, cache_modifier=".cg")
                    tl.store(h_ptr + rows, res + acc, mask=rm)
            elif kind == 2:  # norm -> gate|up -> silu(g) * u
                for blk in range(pid, tl.cdiv(FF, BNG), G):
                    _gateup_rows(blk, h_ptr, rstd, n2_ptr + layer * D, gu_ptr + layer * (2 * FF * D),
                                 gu_s + layer * (2 * FF), act_ptr, D, FF, BNG, BKG, HAS_SCALE, ".cg", SG)
            else:  # down -> residual
                for blk in range(pid, tl.cdiv(D, BND), G):
                    _down_rows(blk, act_ptr, dn_ptr + layer * (D * FF), dn_s + layer * D, h_ptr, D, FF, BND, BKD,
                               HAS_SCALE, ".cg", SD)
            if PREFETCH:  # this program's first block of the next phase (the next step's first, after the head)
                nxt = p * (4 * NL + 1) + ph + 1
                if nxt < L * (4 * NL + 1):
                    _prefetch_depth_phase(nxt % (4 * NL + 1), nxt // (4 * NL + 1), pid, qkv_ptr, o_ptr, gu_ptr,
                                          dn_ptr, hw_ptr, stride_hh, stride_hn, D, NH, NKV, HD, FF, V, NL, BP, BNO,
                                          BNG, BND, BNH)
            failed = _timed_barrier(sync_ptr, (p * (4 * NL + 1) + ph + 1) * G, failed, MAX_SPINS, times_ptr, pid,
                                    TIMING)
        if p > 0:  # every program samples codebook p from the same logits (identical result: no barrier needed)
            v = tl.arange(0, VP)
            vm = v < V
            logits = tl.load(logits_ptr + v, mask=vm, other=float("-inf"), cache_modifier=".cg")
            if SAMPLE:
                noise = tl.load(noise_ptr + (p - 1) * V + v, mask=vm, other=0.0)
            else:
                noise = logits
            c = _pick_token(logits, vm, noise, top_k, SAMPLE)
            if pid == 0:
                tl.store(code_ptr + p, c)
            if FORCE:  # teacher forcing: the next input is the given token
                c = tl.load(force_ptr + p)
    if TIMING:
        _stamp_ends(times_ptr, 2 * L * (4 * NL + 1) + 2, pid)
    _grid_exit(sync_ptr, failed)


def _layer_ptr(base, off_ptr, ALIGN: tl.constexpr):
    # a layer's tensor as an element offset from the lowest-addressed tensor of its kind (the backbone's layers
    # are separate allocations: no copy into one stacked tensor); ALIGN (elements) keeps Triton's 16-byte loads
    off = tl.load(off_ptr)
    if ALIGN > 1:
        off = tl.multiple_of(off, ALIGN)
    return base + off


def _backbone_frame(emb_ptr, pos_ptr, qkv_ptr, o_ptr, gu_ptr, dn_ptr, kv_ptr, off_ptr, n1_ptr, n2_ptr, eps,
                    cos_ptr, sin_ptr, scaling, h_ptr, q_ptr, part_ptr, act_ptr, sync_ptr, times_ptr,
                    D: tl.constexpr, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, FF: tl.constexpr,
                    NL: tl.constexpr, L: tl.constexpr, BP: tl.constexpr, BKA: tl.constexpr, BT: tl.constexpr,
                    BC: tl.constexpr, BNO: tl.constexpr, BNG: tl.constexpr, BKG: tl.constexpr, BND: tl.constexpr,
                    BKD: tl.constexpr, BHD: tl.constexpr, BD: tl.constexpr, ALIGN: tl.constexpr,
                    MAX_SPINS: tl.constexpr, PREFETCH: tl.constexpr, SA: tl.constexpr, SO: tl.constexpr,
                    SG: tl.constexpr, SD: tl.constexpr, TIMING: tl.constexpr):
    # The backbone's one-row step in one launch: the input row into h, then NL layers x the 5 phases of the step
    # kernels (q|k|v + rope + cache write; attention partials over (KV head, chunk); merge + o-proj + residual;
    # gate|up + SwiGLU; down + residual), each split over all programs, a grid-wide barrier after each (grid <= SMs).
    # Per layer, off[layer] holds the element offsets of its q|k|v, o, gate|up, down weights and KV cache from the
    # ``*_ptr`` bases. See FusedBackbone (mode "frame") for the rest of the arguments. PREFETCH: before each barrier,
    # this program's first block of weights of the next phase into L2 (_prefetch_l2); the o-projection's at the
    # barrier after q|k|v, two ahead: attention reads no weights, and keeps few programs busy. SA / SO / SG / SD:
    # pipeline stages of the q|k|v, merge + o, gate|up and down loops (see _gateup_rows). TIMING: as _depth_frame's
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    if TIMING:
        _stamp_ends(times_ptr, 0, pid)
    NP: tl.constexpr = (NH + 2 * NKV) * (HD // 2)
    NC: tl.constexpr = (L + BT - 1) // BT
    pos = tl.load(pos_ptr)
    dd = tl.arange(0, BD)
    dm = dd < D
    failed = pid * 0
    arrivals = pid * 0
    for blk in range(pid, tl.cdiv(D, BND), G):  # the input row (model dtype) into the fp32 residual stream
        rows = blk * BND + tl.arange(0, BND)
        tl.store(h_ptr + rows, tl.load(emb_ptr + rows, mask=rows < D, other=0.0).to(tl.float32), mask=rows < D)
    if PREFETCH:
        _prefetch_qkv_pairs(_layer_ptr(qkv_ptr, off_ptr, ALIGN), pid, D, NH, NKV, HD, BP)
    arrivals += G
    failed = _timed_barrier(sync_ptr, arrivals, failed, MAX_SPINS, times_ptr, pid, TIMING)
    for layer in range(NL):
        offs = off_ptr + layer * 5
        kv_l = _layer_ptr(kv_ptr, offs + 4, ALIGN)
        x = tl.load(h_ptr + dd, mask=dm, other=0.0, cache_modifier=".cg")
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
        w = _layer_ptr(qkv_ptr, offs, ALIGN)
        for blk in range(pid, tl.cdiv(NP, BP), G):
            _qkv_rope_pairs(blk, h_ptr, rstd, n1_ptr + layer * D, w, w, q_ptr, kv_l, pos, cos_ptr, sin_ptr,
                            D, NH, NKV, HD, 1, L, BP, BKA, True, False, ".cg", SA)
        if PREFETCH:
            _prefetch_block(_layer_ptr(o_ptr, offs + 1, ALIGN), pid, BNO, D, NH * HD)
        arrivals += G
        failed = _timed_barrier(sync_ptr, arrivals, failed, MAX_SPINS, times_ptr, pid, TIMING)
        # chunk-major: the chunks up to pos (the only ones with work) spread over the first programs
        for item in range(pid, NKV * NC, G):
            c = item // NKV
            if c * BT <= pos:
                _attn_partial(item % NKV, c, q_ptr, kv_l, pos, part_ptr, scaling, NH, NKV, HD, L, BT, BHD, ".cg")
        arrivals += G
        failed = _timed_barrier(sync_ptr, arrivals, failed, MAX_SPINS, times_ptr, pid, TIMING)
        w = _layer_ptr(o_ptr, offs + 1, ALIGN)
        for blk in range(pid, tl.cdiv(D, BNO), G):
            _attn_merge_o_rows(blk, part_ptr, pos, w, w, h_ptr, D, NH, HD, L, BT, BC, BHD, BNO, False, ".cg", SO)
        if PREFETCH:  # gate rows, then up rows
            w = _layer_ptr(gu_ptr, offs + 2, ALIGN)
            _prefetch_block(w, pid, BNG, FF, D)
            _prefetch_block(w + FF * D, pid, BNG, FF, D)
        arrivals += G
        failed = _timed_barrier(sync_ptr, arrivals, failed, MAX_SPINS, times_ptr, pid, TIMING)
        x = tl.load(h_ptr + dd, mask=dm, other=0.0, cache_modifier=".cg")
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
        w = _layer_ptr(gu_ptr, offs + 2, ALIGN)
        for blk in range(pid, tl.cdiv(FF, BNG), G):
            _gateup_rows(blk, h_ptr, rstd, n2_ptr + layer * D, w, w, act_ptr, D, FF, BNG, BKG, False, ".cg", SG)
        if PREFETCH:
            _prefetch_block(_layer_ptr(dn_ptr, offs + 3, ALIGN), pid, BND, D, FF)
        arrivals += G
        failed = _timed_barrier(sync_ptr, arrivals, failed, MAX_SPINS, times_ptr, pid, TIMING)
        w = _layer_ptr(dn_ptr, offs + 3, ALIGN)
        for blk in range(pid, tl.cdiv(D, BND), G):
            _down_rows(blk, act_ptr, w, w, h_ptr, D, FF, BND, BKD, False, ".cg", SD)
        if layer < NL - 1:  # after the last layer the launch's end orders h for the torch final norm
            if PREFETCH:
                _prefetch_qkv_pairs(_layer_ptr(qkv_ptr, offs + 5, ALIGN), pid, D, NH, NKV, HD, BP)
            arrivals += G
            failed = _timed_barrier(sync_ptr, arrivals, failed, MAX_SPINS, times_ptr, pid, TIMING)
    if TIMING:  # the last down phase ends the launch: its work until here (no barrier after it)
        _stamp_ends(times_ptr, 2 * (5 * NL) + 2, pid)
    _grid_exit(sync_ptr, failed)


def _barrier_loop(sync_ptr, n, MAX_SPINS: tl.constexpr):
    # n grid-wide barriers and nothing else: what one costs on a GPU (fern.bench.tts: grid_barrier_us), the price
    # the persistent kernels pay per phase instead of a launch
    G = tl.num_programs(0)
    failed = tl.program_id(0) * 0
    for i in range(n):
        failed = _grid_barrier(sync_ptr, (i + 1) * G, failed, MAX_SPINS)
    _grid_exit(sync_ptr, failed)


# ---- launching --------------------------------------------------------------------------------------------------

_HELPERS = (_pick_token, _add_rows, _o_rows, _rstd, _qkv_rope_pairs, _attn_partial, _attn_merge_o_rows, _gateup_rows,
            _down_rows, _grid_barrier, _grid_exit, _layer_ptr, _prefetch_l2, _prefetch_block, _prefetch_qkv_pairs,
            _prefetch_depth_phase, _clock, _stamp, _stamp_ends, _timed_barrier)
_SOURCES = {f.__name__: f for f in (_norm_qkv_cache, _attn_o_residual, _norm_gateup_swiglu, _down_residual,
                                    _norm_head_sample, _depth_frame, _attn_split, _attn_combine_o_residual,
                                    _backbone_frame, _barrier_loop)}
_BUILT: dict = {}
# arguments that are views at varying offsets (a position, a code slot, a noise row): Triton would compile the kernel
# once per 16-byte alignment it sees them at (fern.bench.ptx counted 2-4 builds per kernel, each ~1 s of start-up);
# they are read or written as scalars or short rows, so alignment buys nothing
DO_NOT_SPECIALIZE = {"_norm_qkv_cache": ("pos_ptr", "kv_ptr"), "_attn_o_residual": ("pos_ptr",),
                     "_attn_split": ("pos_ptr",), "_attn_combine_o_residual": ("pos_ptr",),
                     "_norm_head_sample": ("code_ptr", "noise_ptr", "force_ptr"), "_backbone_frame": ("pos_ptr",)}


def _kernel(name: str):
    if name not in _BUILT:
        _import()
        # an InterpretedFunction under TRITON_INTERPRET=1
        _BUILT[name] = triton.jit(_SOURCES[name], do_not_specialize=DO_NOT_SPECIALIZE.get(name, ()))
    return _BUILT[name]


class LaunchCounter:
    """Counts kernel launches by name while active (``with counter:``); see fern.bench.opcount.count_kernels."""

    active: list[LaunchCounter] = []

    def __init__(self) -> None:
        self.launches: Counter[str] = Counter()

    def __enter__(self):
        LaunchCounter.active.append(self)
        return self

    def __exit__(self, *exc):
        LaunchCounter.active.remove(self)


class LaunchRecorder:
    """Records launches instead of running them while active (``with recorder:``): name, grid, arguments and meta
    parameters, for compiling them ahead of time for a GPU that is not here (``fern.bench.ptx``)."""

    active: list[LaunchRecorder] = []

    def __init__(self) -> None:
        self.launches: list[tuple[str, tuple, tuple, dict]] = []

    def __enter__(self):
        LaunchRecorder.active.append(self)
        return self

    def __exit__(self, *exc):
        LaunchRecorder.active.remove(self)


def source(name: str):
    """The plain Python function of kernel ``name`` (for ``triton.jit`` outside this module's interpreter choice)."""
    return _SOURCES[name]


def launch(name: str, grid: tuple, *args, num_warps: int = 4, maxnreg: int | None = None, **meta) -> None:
    """Launch kernel ``name``; ``num_warps`` and ``maxnreg`` (a register cap for ptxas, which otherwise may cap at
    half the file to fit two programs per SM, and spill) apply to the compiled kernel only."""
    for c in LaunchCounter.active:
        c.launches[f"triton:{name.lstrip('_')}"] += 1
    options = {"num_warps": num_warps} | ({} if maxnreg is None else {"maxnreg": maxnreg})
    if LaunchRecorder.active:
        for r in LaunchRecorder.active:
            r.launches.append((name, grid, args, dict(meta, **options)))
        return
    k = _kernel(name)
    if triton.knobs.runtime.interpret:
        # the interpreter copies arguments with torch ops: hidden from operator counting, they are no kernels
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes():
            k[grid](*args, **meta)
    else:
        k[grid](*args, **options, **meta)


@contextlib.contextmanager
def no_counting():
    saved = list(LaunchCounter.active)
    LaunchCounter.active.clear()
    try:
        yield
    finally:
        LaunchCounter.active.extend(saved)


def check_blocks(blocks: dict | None, known: dict, what: str) -> None:
    """Refuse launch-shape keys that ``known`` (a path's default shapes) does not have: a mistyped tuning key would
    otherwise leave the default in place, and a figure would be credited to a shape that never ran."""
    unknown = sorted(set(blocks or {}) - set(known))
    if unknown:
        raise ValueError(f"unknown launch shape(s) {unknown} for {what}: known are {sorted(known)}")


STAGE_KEYS = ("SA", "SG", "SD", "qkv_stages", "o_stages", "gu_stages", "down_stages")


def check_stages(blocks: dict) -> None:
    """Refuse a pipeline depth (the persistent kernels' ``tl.range(num_stages=...)`` keys) that is not an integer
    >= 1 (1: no pipelining)."""
    bad = {k: v for k, v in blocks.items()
           if k in STAGE_KEYS and (not isinstance(v, int) or isinstance(v, bool) or v < 1)}
    if bad:
        raise ValueError(f"pipeline stages must be integers >= 1 (1: none), got {bad}")


def _check_ptx_switch(value, device, what: str, why: str) -> None:
    # a persistent kernel's PTX-only switch: 0 or 1, and 1 only where the kernels run on a GPU (``device`` cpu means
    # Triton's interpreter, which runs no PTX; None checks the value alone). Both switches change no result
    if value not in (0, 1):
        raise ValueError(f"{what} must be 0 or 1, got {value!r}")
    if value and device is not None and device.type == "cpu":
        raise ValueError(f"{what}=1 {why}, which Triton's interpreter on the CPU cannot run: leave it 0 there")


def check_prefetch(prefetch, device=None) -> None:
    """The L2 prefetch before each barrier (PREFETCH / prefetch): 0 or 1, and 1 on a GPU only (a PTX instruction)."""
    _check_ptx_switch(prefetch, device, "prefetch", "issues PTX prefetches")


def check_timing(timing, device=None) -> None:
    """The persistent kernels' phase timing (TIMING / timing): 0 or 1, and 1 on a GPU only (it reads PTX clocks)."""
    _check_ptx_switch(timing, device, "timing", "reads the GPU's clocks in PTX")


def phase_breakdown(times: list[int], kinds: list[str], tail: str | None = None) -> dict:
    """Where a persistent kernel's launch went, from its TIMING stamps (``_timed_barrier``: slots 0 / 1 the
    launch's start in ns / cycles, 2b / 2b + 1 program 0's cycles before / after barrier b (from 1), the two after the
    last barrier its end): per phase kind (``kinds[b - 1]`` names the phase barrier b ends; ``tail`` the phase after
    the last barrier, if any), program 0's mean work and wait at the barrier in us, how many per launch, and their
    ms per launch; cycles become time by the launch's own ratio of ns to cycles."""
    nb = len(kinds)
    if len(times) < 2 * nb + 4:
        raise ValueError(f"{len(times)} stamps for {nb} barriers: need {2 * nb + 4}")
    cycles = times[2 * nb + 3] - times[1]
    if cycles <= 0 or times[2 * nb + 2] <= times[0]:
        raise ValueError("no timed launch in these stamps (run one with TIMING=1 first)")
    us = (times[2 * nb + 2] - times[0]) / cycles / 1e3  # per cycle
    out: dict = {}
    spans = [(kinds[b - 1], times[2 * b] - times[2 * b - 1], times[2 * b + 1] - times[2 * b]) for b in range(1, nb + 1)]
    if tail is not None:
        spans.append((tail, times[2 * nb + 3] - times[2 * nb + 1], 0))
    for kind, work, wait in spans:
        row = out.setdefault(kind, {"work_us": 0.0, "wait_us": 0.0, "per_launch": 0})
        row["work_us"] += work * us
        row["wait_us"] += wait * us
        row["per_launch"] += 1
    for row in out.values():
        row["ms_per_launch"] = (row["work_us"] + row["wait_us"]) / 1e3
        row["work_us"] /= row["per_launch"]
        row["wait_us"] /= row["per_launch"]
    return {"phases": out, "launch_ms": (times[2 * nb + 2] - times[0]) / 1e6, "ns_per_cycle": us * 1e3}


def usable_on(device) -> str | None:
    """None if the kernels compile and run on ``device`` (one tiny launch checked against torch), else why not."""
    if not _import():
        return "triton is not importable"
    if device.type == "cpu" and not interpreter_active():
        return "Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1 before Triton is imported)"
    if device.type == "cuda" and triton.knobs.runtime.interpret:
        return "TRITON_INTERPRET=1 is set: the kernels would run in the (slow, host-side) interpreter"
    if device.type not in ("cpu", "cuda"):
        return f"no Triton kernels for device {device}"
    import torch

    try:
        g = torch.Generator().manual_seed(0)
        act = torch.randn(16, generator=g).to(device)
        w = torch.randn(8, 16, generator=g).to(device)
        h = torch.zeros(8, device=device)
        with no_counting():
            launch("_down_residual", (1,), act, w, act, h, D=8, FF=16, BN=8, BK=16, HAS_SCALE=False)
        err = float((h - w @ act).abs().max())
        if not err < 1e-3:
            return f"probe kernel gave a wrong result (max error {err:.3g})"
    except Exception as exc:  # noqa: BLE001 - any failure means "use the torch path"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None
