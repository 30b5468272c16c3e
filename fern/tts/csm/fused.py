"""The depth decoder's part of a frame (codebooks 1..31) as fused one-row steps: Triton kernels, or the same math in
torch (the reference the kernels are tested against, and the CPU path for int8 / fp8 weights).

A frame's depth decoder runs positions 0..n_cb-1 one row each (position 0: the backbone state, 1: codebook 0's
embedding, p >= 2: codebook p-1's), each step through every layer; steps at positions >= 1 end in codebook head p-1,
whose sampled token is codebook p. The rope of each fixed position is folded into that position's q|k|v weight
(``_Stack.qkv_rotated_at``), so the kernels need none. Per step: 4 launches per layer + 1 for the head, norm and
sampling (greedy, or top-k Gumbel-max with one noise value per vocabulary entry), which also writes the next step's
input row. Transformers' depth decoder processes positions 0 and 1 as one two-row step; causality makes two one-row
steps equivalent.

Weights (``weights``): ``bf16`` keeps the model's own (whatever its dtype; no copy, except the rope-folded q|k|v of
positions 0 and 1 and the codebook heads), ``int8`` / ``fp8`` quantize every depth-decoder GEMV weight and the codebook
heads per output channel (symmetric, one fp32 scale per row; fp8 is float8_e4m3fn, scaled to its max 448). The heads
are stored (vocab, hidden) in every kind: the model's (hidden, vocab) rows are 2051 entries long, which no 16-byte
load can follow, and the kernels read them 2 bytes at a time (fern.bench.ptx); transposed, the reads along hidden
are 16-byte loads (a 130 MB copy for CSM-1B in bf16). Embedding tables stay in the model dtype: a step reads one row
of them.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from fern.tts.csm import kernels as K

log = logging.getLogger(__name__)

WEIGHT_KINDS = ("bf16", "int8", "fp8")
_QMAX = {"int8": 127.0, "fp8": 448.0}


def quantize(w: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., out, in) weight -> (quantized weight, fp32 scale per output row); ``dequantize`` inverts it up to
    rounding."""
    wf = w.detach().float()
    scale = (wf.abs().amax(dim=-1) / _QMAX[kind]).clamp_min(1e-12)
    q = wf / scale[..., None]
    if kind == "int8":
        q = q.round_().clamp_(-127, 127).to(torch.int8)
    elif kind == "fp8":
        q = q.to(torch.float8_e4m3fn)
    else:
        raise ValueError(f"unknown weight kind {kind!r}")
    return q.contiguous(), scale.contiguous()


def dequantize(q: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return q.float() if scale is None else q.float() * scale[..., None]


def fp8_supported(device) -> str | None:
    """None if float8_e4m3fn tensors can be made on ``device``, else why not."""
    try:
        torch.zeros(2, device=device).to(torch.float8_e4m3fn).float()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


class _W:
    """One GEMV weight as the kernels read it: ``w`` (model dtype, int8 or fp8) and its per-row scale (or None)."""

    __slots__ = ("w", "scale")

    def __init__(self, w: torch.Tensor, kind: str):
        if kind == "bf16":
            self.w, self.scale = w.detach(), None
        else:
            self.w, self.scale = quantize(w, kind)

    def view(self, i: int) -> _W:
        """Entry ``i`` of a stacked weight (layer, codebook head), sharing its memory."""
        out = _W.__new__(_W)
        out.w, out.scale = self.w[i], (None if self.scale is None else self.scale[i])
        return out

    def nbytes(self) -> int:
        return self.w.numel() * self.w.element_size() + (0 if self.scale is None else self.scale.numel() * 4)


# launch shapes per device: many programs on a GPU (bandwidth needs them), the fewest in the interpreter (each
# program costs milliseconds there). Not tuned on a GPU yet.
# head_maxnreg: the head kernel's last program samples over the whole vocabulary; without the cap ptxas keeps it to
# 128 registers and spills (fern.bench.ptx: 12 bytes for int8); 65 programs need no second one per SM anyway
GPU_BLOCKS = dict(qkv_bp=8, qkv_bk=256, o_bn=16, gu_bn=32, gu_bk=128, down_bn=8, down_bk=512, head_bn=32, head_bk=128,
                  num_warps=4, head_maxnreg=255)
# the persistent kernel (mode "frame"): about one block per program per phase at CSM-1B's widths on ~132 SMs
# (768 q|k|v row pairs / 8, 1024 rows / 8, 8192 gate|up rows / 64, 2051 logits / 16). One program per SM, so it may
# take the whole register file: without maxnreg ptxas caps it at 128 registers (two programs per SM) and spills
# 56-116 bytes per thread (fern.bench.ptx, sm_90); with it, none. PREFETCH=1: before each barrier, each program
# asks for its first block of the next phase's weights into L2 (kernels._prefetch_l2), so DRAM works while the
# programs wait; off until a GPU says it pays (fern.bench.tts variant @PREFETCH=1). SA / SG / SD: pipeline stages of
# the q|k|v, gate|up and down K loops (tl.range num_stages: the next tiles copied into shared memory while this one
# is multiplied), so that each phase keeps >= 32 KB of weights in flight per program where DRAM's latency needs ~22
# KB per SM (fern.bench.ptx counts them in the SASS); SD=5: four 8 KB tiles ahead, 41 KB of shared memory. BKH=1024:
# the head's whole 32 KB block at once
FRAME_GPU_BLOCKS = dict(BP=8, BKA=256, BNO=8, BNG=64, BKG=128, BND=8, BKD=512, BNH=16, BKH=1024, num_warps=8,
                        maxnreg=255, PREFETCH=0, SA=1, SG=1, SD=5, TIMING=0)
# 1-byte weights: twice the K tile, so that a tile holds as many bytes as in bf16 (the q|k|v block whole at once,
# gate|up and down 32 KB in flight)
FRAME_GPU_BLOCKS_1BYTE = dict(BKA=1024, BKG=256, BKD=1024)
MODES = ("steps", "frame")
MAX_SPINS = 1 << 20  # polls of a grid barrier before the persistent kernel gives up (~1 s: it would hang instead)


class FusedDepth:
    """Codebooks 1..n_cb-1 of a frame from the backbone's depth-decoder input rows; see the module docstring.

    ``mode``: ``steps`` launches 4 kernels per layer and step + 1 per head (rope folded into per-position q|k|v
    weights, the model's own weights otherwise); ``frame`` runs the whole frame as one persistent launch
    (``kernels._depth_frame``: grid-wide barriers between phases, every program samples), which reads per-layer
    weights stacked into one tensor each (a copy, ~200 MB in bf16 for CSM-1B) and applies rope in the kernel.
    The torch backend computes either mode's math (the reference its kernels are tested against)."""

    def __init__(self, engine, backend: str = "triton", weights: str = "bf16", blocks: dict | None = None,
                 mode: str = "steps"):
        if backend not in ("triton", "torch"):
            raise ValueError(f"backend must be triton or torch, got {backend!r}")
        if weights not in WEIGHT_KINDS:
            raise ValueError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        dd = engine.dd
        if not dd.fused or engine._dd_embed_projected is None:
            raise ValueError("the fused depth decoder needs plain Linear layers (no unmerged LoRA)")
        self.backend, self.kind, self.mode = backend, weights, mode
        self.device = engine.device
        self.n_cb, self.V = engine.n_cb, engine.vocab
        self.D, self.NH, self.NKV, self.HD = dd.hidden, dd.n_heads, dd.n_kv, dd.head_dim
        self.scaling = float(dd.scaling)
        self.L = self.n_cb  # positions per frame
        layers = dd.layers
        self.FF = layers[0].mlp.down_proj.weight.shape[1]
        self.eps1 = [float(layer.input_layernorm.variance_epsilon) for layer in layers]
        self.eps2 = [float(layer.post_attention_layernorm.variance_epsilon) for layer in layers]
        self.norm1 = [layer.input_layernorm.weight.detach() for layer in layers]
        self.norm2 = [layer.post_attention_layernorm.weight.detach() for layer in layers]
        self.final_norm, self.final_eps = dd.norm.weight.detach(), float(dd.norm.variance_epsilon)
        if mode == "frame":
            self._frame_init(engine, weights)
        else:
            with torch.no_grad():
                # rope-folded q|k|v per position; the engine's torch path already holds positions 2.. (no copy)
                folded = {step + 1: engine._dd_rows[step][4] for step in range(1, len(engine._dd_rows))
                          if engine._dd_rows[step][4] is not None}
                per_pos = [folded[p] if p in folded else dd.qkv_rotated_at(p) for p in range(self.L)]
                self.qkv = [[_W(per_pos[p][i], weights) for i in range(len(layers))] for p in range(self.L)]
                self.o = [_W(layer.self_attn.o_proj.weight, weights) for layer in layers]
                self.gu = [_W(layer._fern_gu, weights) for layer in layers]
                self.down = [_W(layer.mlp.down_proj.weight, weights) for layer in layers]
                # codebook heads are (hidden, vocab): logits = y @ head; stored (vocab, hidden) (module docstring),
                # quantized per vocabulary entry
                self.head = [_W(w.t().contiguous(), weights) for w in engine._head_w]
        self.tables = engine._dd_tables
        dev = self.device
        self.h = torch.zeros(self.D, device=dev, dtype=torch.float32)  # the residual stream, fp32
        # per layer: q, k, v of every position, (NH + 2 * NKV, L, HD); K and V rows are this frame's cache
        if mode == "frame":  # the persistent kernel takes them as one tensor
            self.buf_all = torch.zeros(len(layers), self.NH + 2 * self.NKV, self.L, self.HD, device=dev)
            self.buf = list(self.buf_all)
        else:
            self.buf = [torch.zeros(self.NH + 2 * self.NKV, self.L, self.HD, device=dev) for _ in layers]
        self.act = torch.zeros(self.FF, device=dev)
        self.logits = torch.zeros(self.V, device=dev)
        self.counter = torch.zeros(1, device=dev, dtype=torch.int32)
        self.codes = torch.zeros(self.n_cb, device=dev, dtype=torch.long)
        self.positions = torch.arange(self.L, device=dev)
        p2 = K.next_pow2
        known = FRAME_GPU_BLOCKS if mode == "frame" else GPU_BLOCKS
        K.check_blocks(blocks, known, f"the depth decoder's kernels (mode {mode})")
        if mode == "frame":
            if dev.type == "cuda":
                self.blocks = dict(FRAME_GPU_BLOCKS, **(FRAME_GPU_BLOCKS_1BYTE if weights != "bf16" else {}),
                                   **(blocks or {}))
            else:  # interpreter: one program (the barrier cannot wait for programs it runs one after another)
                self.blocks = dict(BP=p2((self.NH + 2 * self.NKV) * self.HD // 2), BKA=p2(self.D), BNO=p2(self.D),
                                   BNG=p2(self.FF), BKG=p2(self.D), BND=p2(self.D), BKD=p2(self.FF), BNH=p2(self.V),
                                   BKH=p2(self.D), num_warps=4, PREFETCH=0, SA=1, SG=1, SD=1, TIMING=0)
                self.blocks.update(blocks or {})
            K.check_prefetch(self.blocks["PREFETCH"], dev)
            K.check_timing(self.blocks["TIMING"], dev)
            K.check_stages(self.blocks)
            self.grid = self._frame_grid()
        elif dev.type == "cuda":
            self.blocks = dict(GPU_BLOCKS, **(blocks or {}))
        else:  # interpreter: one program per kernel where the shapes allow
            self.blocks = dict(qkv_bp=p2((self.NH + 2 * self.NKV) * self.HD // 2), qkv_bk=p2(self.D), o_bn=p2(self.D),
                               gu_bn=p2(self.FF), gu_bk=p2(self.D), down_bn=p2(self.D), down_bk=p2(self.FF),
                               head_bn=p2(self.V), head_bk=p2(self.D), num_warps=4)
            self.blocks.update(blocks or {})
        if backend == "torch":  # the reference computes with the dequantized weights in fp32
            self._deq = {id(w): dequantize(w.w, w.scale) for w in self._all_weights()}

    def _frame_init(self, engine, weights: str) -> None:
        """Mode ``frame``: per-layer weights stacked (layer, out, in), un-rotated q|k|v, the heads as one tensor."""
        layers = engine.dd.layers
        eps = set(self.eps1 + self.eps2)
        if len(eps) != 1:
            raise ValueError(f"the persistent kernel takes one rms-norm epsilon for every layer, got {sorted(eps)}")
        with torch.no_grad():
            stack = torch.stack
            self.qkv_all = _W(stack([layer._fern_qkv for layer in layers]), weights)
            self.o_all = _W(stack([layer.self_attn.o_proj.weight for layer in layers]), weights)
            self.gu_all = _W(stack([layer._fern_gu for layer in layers]), weights)
            self.down_all = _W(stack([layer.mlp.down_proj.weight for layer in layers]), weights)
            head_w = engine.model.depth_decoder.codebooks_head.weight  # (n_cb - 1, hidden, vocab)
            # stored (n_cb - 1, vocab, hidden) (module docstring), quantized per vocabulary entry
            self.head_all = _W(head_w.transpose(1, 2).contiguous(), weights)
            self.norm1_all = stack(self.norm1).contiguous()
            self.norm2_all = stack(self.norm2).contiguous()
        n = len(layers)
        self.qkv = [[self.qkv_all.view(i) for i in range(n)]] * self.L  # every position reads the same weights
        self.o = [self.o_all.view(i) for i in range(n)]
        self.gu = [self.gu_all.view(i) for i in range(n)]
        self.down = [self.down_all.view(i) for i in range(n)]
        self.head = [self.head_all.view(i) for i in range(self.n_cb - 1)]
        self.cos, self.sin = engine.dd.cos.contiguous(), engine.dd.sin.contiguous()  # (positions, head_dim)
        self.table_all = engine._dd_embed_projected  # (n_cb * vocab, hidden): codebook p's token c is row p*V + c
        # barrier arrivals, programs done, a flag set when a barrier gave up waiting (see barrier_timed_out), and
        # the barriers the last launch passed
        self.sync = torch.zeros(4, device=engine.device, dtype=torch.int32)
        # TIMING=1: program 0's clock around each barrier (kernels.phase_breakdown)
        self.times = torch.zeros(2 * self.barriers_per_frame() + 4, device=engine.device, dtype=torch.int64)

    def _frame_grid(self) -> int:
        """Programs of the persistent kernel: at most one per SM, so all are resident at once (the barriers wait for
        every program), and no more than the largest phase has blocks. One in the interpreter."""
        if self.device.type != "cuda":
            return 1
        b, cd = self.blocks, triton_cdiv
        most = max(cd((self.NH + 2 * self.NKV) * self.HD // 2, b["BP"]), cd(self.D, b["BNO"]), cd(self.FF, b["BNG"]),
                   cd(self.D, b["BND"]), cd(self.V, b["BNH"]))
        return max(1, min(most, torch.cuda.get_device_properties(self.device).multi_processor_count))

    def _all_weights(self):
        """Each weight once (mode ``frame`` lists the same q|k|v weights for every position)."""
        seen = set()
        for w in (*(w for row in self.qkv for w in row), *self.o, *self.gu, *self.down, *self.head):
            if id(w) not in seen:
                seen.add(id(w))
                yield w

    def weight_bytes_per_frame(self) -> int:
        """Bytes of weights one frame's depth decoder reads (each step's weights once; embedding rows ignored)."""
        layers = sum(self.o[i].nbytes() + self.gu[i].nbytes() + self.down[i].nbytes() for i in range(len(self.o)))
        qkv = sum(w.nbytes() for row in self.qkv for w in row)
        return self.L * layers + qkv + sum(w.nbytes() for w in self.head)

    # ---- one frame ----------------------------------------------------------------------------------------------
    def run(self, x: torch.Tensor, c0: torch.Tensor, noise: torch.Tensor | None, top_k: int,
            force: torch.Tensor | None = None) -> torch.Tensor:
        """x: (1, 2, D) inputs of positions 0 and 1 (backbone state, codebook 0's embedding); c0: (1,) codebook 0;
        noise: (n_cb - 1, V) temperature-scaled Gumbel noise or None (greedy); ``force``:
        (n_cb,) tokens fed as the next inputs instead of the sampled ones (teacher forcing, for agreement figures).
        -> codes (1, n_cb), a view of a buffer reused by the next call."""
        k = self.V if not 0 < top_k < self.V else int(top_k)
        self.codes[:1].copy_(c0)
        if self.mode == "frame" and self.backend == "triton":
            self._frame_triton(x, noise, k, force)
            return self.codes.view(1, self.n_cb)
        self.h.copy_(x[0, 0])
        self._step(0, None, noise, k, force)
        self.h.copy_(x[0, 1])
        for p in range(1, self.L):
            self._step(p, p - 1, noise, k, force)
        return self.codes.view(1, self.n_cb)

    def _step(self, p: int, head: int | None, noise, k: int, force) -> None:
        if self.backend == "triton":
            for i in range(len(self.o)):
                self._layer_triton(i, p)
            if head is not None:
                self._head_triton(p, head, noise, k, force)
        else:
            for i in range(len(self.o)):
                self._layer_torch(i, p)
            if head is not None:
                self._head_torch(p, head, noise, k, force)

    # ---- Triton ---------------------------------------------------------------------------------------------
    def _frame_triton(self, x, noise, k: int, force) -> None:
        b = self.blocks
        hw = self.head_all
        shh, shk, shn = hw.w.stride(0), hw.w.stride(2), hw.w.stride(1)  # (n_cb - 1, vocab, hidden)
        ws = (self.qkv_all, self.o_all, self.gu_all, self.down_all, hw)
        # the input rows in the embedding table's dtype: the kernel reads the step's row from either through one
        # pointer type (a no-op for the engine, which passes the model's dtype)
        K.launch("_depth_frame", (self.grid,), x.to(self.table_all.dtype).contiguous(), self.table_all, self.codes,
                 self.codes if force is None else force, self.logits if noise is None else noise, k,
                 *[t for w in ws for t in (w.w, _s(w))], shh, shk, shn,
                 self.norm1_all, self.norm2_all, self.final_norm, self.eps1[0], self.final_eps, self.cos, self.sin,
                 self.scaling, self.buf_all, self.h, self.act, self.logits, self.sync, self.times,
                 D=self.D, NH=self.NH, NKV=self.NKV, HD=self.HD, FF=self.FF, V=self.V, VP=K.next_pow2(self.V),
                 NL=len(self.o), L=self.L, BP=b["BP"], BKA=b["BKA"], BNO=b["BNO"], BNG=b["BNG"], BKG=b["BKG"],
                 BND=b["BND"], BKD=b["BKD"], BNH=b["BNH"], BKH=b["BKH"], BL=K.next_pow2(self.L),
                 BHD=K.next_pow2(self.HD), BH=K.next_pow2(self.NH), BR=K.next_pow2(self.NH // self.NKV),
                 BD=K.next_pow2(self.D),
                 HAS_SCALE=hw.scale is not None, SAMPLE=noise is not None, FORCE=force is not None,
                 MAX_SPINS=MAX_SPINS, PREFETCH=int(b["PREFETCH"]), SA=b["SA"], SG=b["SG"], SD=b["SD"],
                 TIMING=int(b["TIMING"]),
                 num_warps=b["num_warps"], maxnreg=b.get("maxnreg"))

    def barriers_per_frame(self) -> int:
        """Grid-wide barriers one frame waits at (mode ``frame``: after each phase of each step), else 0."""
        return self.L * (4 * len(self.o) + 1) if self.mode == "frame" and self.backend == "triton" else 0

    def phase_times(self) -> dict:
        """Where the last launch of the persistent kernel (launched with TIMING=1) went, per phase: see
        kernels.phase_breakdown. q|k|v of layer 0 includes sampling the previous codebook (top-k by bisection)."""
        if self.mode != "frame" or not self.blocks.get("TIMING"):
            raise ValueError("phase times need the persistent kernel launched with TIMING=1")
        per_step = ["head" if i == 4 * len(self.o) else ("q|k|v", "attention + o", "gate|up", "down")[i % 4]
                    for i in range(4 * len(self.o) + 1)]
        kinds = per_step * self.L
        kinds[4 * len(self.o)] = "step 0 (no head)"  # the first step's head phase is empty: its barrier alone
        # after the last barrier every program samples the last codebook
        return K.phase_breakdown(self.times.tolist(), kinds, tail="last sample")

    def barrier_timed_out(self) -> bool:
        """Whether a launch of the persistent kernel gave up waiting at a grid barrier (its programs were not all
        resident at once): its codes are garbage. Reading it syncs with the device; check after warm-up."""
        return self.mode == "frame" and self.backend == "triton" and bool(self.sync[2].item())

    def _layer_triton(self, i: int, p: int) -> None:
        b, D, NH, NKV, HD, L, FF = self.blocks, self.D, self.NH, self.NKV, self.HD, self.L, self.FF
        nw = b["num_warps"]
        pos = self.positions[p:p + 1]
        buf = self.buf[i]
        w = self.qkv[p][i]
        pairs = (NH + 2 * NKV) * (HD // 2)
        K.launch("_norm_qkv_cache", (triton_cdiv(pairs, b["qkv_bp"]),), self.h, self.norm1[i], self.eps1[i], w.w,
                 _s(w), buf, buf[NH:], pos, self.h, self.h, D=D, NH=NH, NKV=NKV, HD=HD, QL=L, L=L, BP=b["qkv_bp"],
                 BK=b["qkv_bk"], ROPE=False, HAS_SCALE=w.scale is not None, num_warps=nw)
        w = self.o[i]
        K.launch("_attn_o_residual", (triton_cdiv(D, b["o_bn"]),), buf, pos, w.w, _s(w), self.h, self.scaling,
                 D=D, NH=NH, NKV=NKV, HD=HD, L=L, BL=K.next_pow2(L), BHD=K.next_pow2(HD), BN=b["o_bn"],
                 HAS_SCALE=w.scale is not None, num_warps=nw)
        w = self.gu[i]
        K.launch("_norm_gateup_swiglu", (triton_cdiv(FF, b["gu_bn"]),), self.h, self.norm2[i], self.eps2[i], w.w,
                 _s(w), self.act, D=D, FF=FF, BN=b["gu_bn"], BK=b["gu_bk"], HAS_SCALE=w.scale is not None,
                 num_warps=nw)
        w = self.down[i]
        K.launch("_down_residual", (triton_cdiv(D, b["down_bn"]),), self.act, w.w, _s(w), self.h, D=D, FF=FF,
                 BN=b["down_bn"], BK=b["down_bk"], HAS_SCALE=w.scale is not None, num_warps=nw)

    def _head_triton(self, p: int, head: int, noise, k: int, force) -> None:
        b = self.blocks
        w = self.head[head]
        swk, swn = w.w.stride(1), w.w.stride(0)  # (vocab, hidden)
        last = p == self.L - 1
        table = self.tables[p] if not last else self.tables[0]
        K.launch("_norm_head_sample", (triton_cdiv(self.V, b["head_bn"]),), self.h, self.final_norm, self.final_eps,
                 w.w, swk, swn, _s(w), self.logits, self.counter, noise[head] if noise is not None else self.logits,
                 k, self.codes[p:p + 1], table, self.codes if force is None else force[p:p + 1], D=self.D, V=self.V,
                 VP=K.next_pow2(self.V), BN=b["head_bn"], BK=b["head_bk"], HAS_SCALE=w.scale is not None,
                 SAMPLE=noise is not None, WRITE_NEXT=not last, FORCE=force is not None, num_warps=b["num_warps"],
                 maxnreg=b.get("head_maxnreg"))

    # ---- the same math in torch -------------------------------------------------------------------------------
    def _dq(self, w: _W) -> torch.Tensor:
        return self._deq[id(w)]

    def _layer_torch(self, i: int, p: int) -> None:
        NH, NKV, HD = self.NH, self.NKV, self.HD
        h, buf = self.h, self.buf[i]
        x = F.rms_norm(h, (self.D,), self.norm1[i].float(), self.eps1[i])
        buf[:, p] = (self._dq(self.qkv[p][i]) @ x).view(NH + 2 * NKV, HD)
        if self.mode == "frame":  # un-rotated weights: rope on the projected q and k rows
            qk = buf[: NH + NKV, p]
            half = HD // 2
            rot = torch.cat((-qk[:, half:], qk[:, :half]), dim=-1)
            buf[: NH + NKV, p] = qk * self.cos[p].float() + rot * self.sin[p].float()
        q = buf[:NH, p].view(NKV, NH // NKV, 1, HD)
        kc, vc = buf[NH:NH + NKV, : p + 1, None], buf[NH + NKV:, : p + 1, None]  # (NKV, p+1, 1, HD)
        att = torch.softmax((q * kc.transpose(1, 2)).sum(-1) * self.scaling, dim=-1)  # (NKV, rep, p+1)
        o = (att[..., None] * vc.transpose(1, 2)).sum(2).reshape(NH * HD)
        h += self._dq(self.o[i]) @ o
        x = F.rms_norm(h, (self.D,), self.norm2[i].float(), self.eps2[i])
        g, u = (self._dq(self.gu[i]) @ x).chunk(2)
        self.act.copy_(F.silu(g) * u)
        h += self._dq(self.down[i]) @ self.act

    def _head_torch(self, p: int, head: int, noise, k: int, force) -> None:
        y = F.rms_norm(self.h, (self.D,), self.final_norm.float(), self.final_eps)
        w = self.head[head]
        logits = self._dq(w) @ y
        self.logits.copy_(logits)
        self.codes[p] = sample_fused(logits, noise[head] if noise is not None else None, k)
        if p < self.L - 1:
            c = self.codes[p] if force is None else force[p]
            self.h.copy_(self.tables[p][c])


def sample_fused(logits: torch.Tensor, noise: torch.Tensor | None, k: int) -> torch.Tensor:
    """What the head kernel's last program does: argmax, or Gumbel-max over the top-k set with one noise value per
    vocabulary entry (the same distribution as the engine's per-rank noise: i.i.d. noise over the same set)."""
    if noise is None:
        return logits.argmax(-1)
    thr = torch.topk(logits, k, dim=-1).values[..., -1:]
    return torch.where(logits >= thr, logits + noise, float("-inf")).argmax(-1)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _s(w: _W) -> torch.Tensor:
    return w.scale if w.scale is not None else w.w  # an unused pointer when HAS_SCALE is false
