"""The backbone's one-row step (a frame's 16 CSM-1B layers) through Triton kernels: 5 launches per layer instead of
the torch fast path's 13 operators (mode ``layers``, ``tts.backbone_kernels=triton``), or all of them as one
persistent launch (mode ``frame``, ``tts.backbone_kernels=persistent``).

    _norm_qkv_cache           rms-norm(h) -> q|k|v GEMV -> rope in the kernel -> q to scratch, k and v into the
                              backbone's own KV cache (the one its torch prefill writes: prompts stay on torch)
    _attn_split               attention split over (KV head, chunk of BT positions) up to the row's position: each
                              program's partial max, sum and weighted V (flash-decoding)
    _attn_combine_o_residual  every program merges the partials of every head, o-proj rows -> h +=
    _norm_gateup_swiglu       as in the depth decoder (fern.tts.csm.kernels)
    _down_residual            as in the depth decoder

Why: with the depth decoder one launch (``tts.kernels=persistent``), 236 of a frame's 237 kernels are the backbone's.
Whether fewer of them pay off on a GPU is for ``fern.bench.tts`` to say (``backbone_ms_per_frame``); these are the
candidates it measures. The final norm, codebook 0's head and sampling stay torch (a handful of kernels). The
residual stream and scratch are fp32; weights are the model's own (no copy). Grids are fixed whatever the position
(chunks past it return at once), so a frame is graph-capturable.

Mode ``frame`` (``kernels._backbone_frame``) runs the same five phases per layer in one launch of at most one
program per SM, with a grid-wide barrier after each phase where mode ``layers`` ends a launch: 80 launches become
one, at the price of 80 barriers (the copy of the input row into the residual stream becomes a phase; the last
layer's end is the launch's). The
layers' weights and KV caches stay separate allocations; the kernel finds each through element offsets from the
lowest-addressed one of its kind (``self.offsets``), so nothing is copied or stacked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fern.tts.csm import kernels as K
from fern.tts.csm.fused import MAX_SPINS

# many programs on a GPU (bandwidth needs them); one per kernel where the shapes allow in the interpreter (each
# program costs milliseconds there). Not tuned on a GPU yet. BT: positions per attention chunk
GPU_BLOCKS = dict(qkv_bp=8, qkv_bk=256, attn_bt=64, o_bn=16, gu_bn=32, gu_bk=128, down_bn=8, down_bk=512, num_warps=4)
# mode "frame": every phase's blocks over ~132 programs (H100 / H200) in whole rounds, or close: 384 blocks of q|k|v
# row pairs (3 rounds), 256 (KV head, chunk) items at 2048 positions, 128 blocks of o rows, 256 of gate|up, 128 of
# down. With 8 warps every weight load is 16 bytes per thread but the o-projection's [16, 64] tile (8: wider, half
# the programs would idle on it). One program per SM may take the whole register file (maxnreg, as the persistent
# depth decoder): fern.bench.ptx, sm_90: 221 registers, no spills. Not tuned on a GPU yet. prefetch: as the depth
# decoder's PREFETCH (fused.FRAME_GPU_BLOCKS), off until measured. *_stages: each K loop pipelined so that a
# program keeps 32 KB of weights in flight (16 in the o-projection, 2 KB per head: 8 heads ahead), where DRAM's
# latency needs ~22 KB per SM (fern.bench.ptx counts them in the SASS; unpipelined: 8, 16, 16 and 2 KB); 87 KB of
# shared memory
FRAME_GPU_BLOCKS = dict(qkv_bp=4, qkv_bk=512, attn_bt=64, o_bn=16, gu_bn=32, gu_bk=128, down_bn=16, down_bk=512,
                        num_warps=8, maxnreg=255, prefetch=0, qkv_stages=5, o_stages=9, gu_stages=3, down_stages=3,
                        timing=0)
MODES = ("layers", "frame")


class FusedBackbone:
    """``run(emb, pos)``: the backbone's hidden state (normed) for one row at position ``pos``, through the kernels
    above (``mode``: layers | frame), writing that row's K/V into ``engine.bb``'s cache."""

    backend = "triton"  # as FusedDepth's: the backbone's torch path is the engine's own, not a part of this class

    def __init__(self, engine, blocks: dict | None = None, mode: str = "layers"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        bb = engine.bb
        if not bb.fused:
            raise ValueError("the fused backbone needs plain Linear layers (no unmerged LoRA)")
        self.bb, self.mode, self.device = bb, mode, engine.device
        self.D, self.NH, self.NKV, self.HD, self.L = bb.hidden, bb.n_heads, bb.n_kv, bb.head_dim, bb.max_len
        self.FF = bb.layers[0].mlp.down_proj.weight.shape[1]
        self.scaling = float(bb.scaling)
        layers = bb.layers
        self.qkv = [layer._fern_qkv.detach() for layer in layers]
        self.o = [layer.self_attn.o_proj.weight.detach() for layer in layers]
        self.gu = [layer._fern_gu.detach() for layer in layers]
        self.down = [layer.mlp.down_proj.weight.detach() for layer in layers]
        self.norm1 = [layer.input_layernorm.weight.detach() for layer in layers]
        self.norm2 = [layer.post_attention_layernorm.weight.detach() for layer in layers]
        self.eps1 = [float(layer.input_layernorm.variance_epsilon) for layer in layers]
        self.eps2 = [float(layer.post_attention_layernorm.variance_epsilon) for layer in layers]
        self.cos, self.sin = bb.cos.contiguous(), bb.sin.contiguous()  # (max_len, head_dim), the model's rope
        self.final_norm, self.final_eps = bb.norm.weight.detach().float(), float(bb.norm.variance_epsilon)
        dev = engine.device
        p2 = K.next_pow2
        known = FRAME_GPU_BLOCKS if mode == "frame" else GPU_BLOCKS
        K.check_blocks(blocks, known, f"the backbone's kernels (mode {mode})")
        if dev.type == "cuda":
            self.blocks = dict(known, **(blocks or {}))
        else:
            self.blocks = dict(qkv_bp=p2((self.NH + 2 * self.NKV) * self.HD // 2), qkv_bk=p2(self.D),
                               attn_bt=min(64, p2(self.L)), o_bn=p2(self.D), gu_bn=p2(self.FF), gu_bk=p2(self.D),
                               down_bn=p2(self.D), down_bk=p2(self.FF), num_warps=4)
            self.blocks.update(blocks or {})
        if mode == "frame":
            K.check_prefetch(self.blocks.get("prefetch", 0), dev)
            K.check_timing(self.blocks.get("timing", 0), dev)
            K.check_stages(self.blocks)
        self.chunks = -(-self.L // self.blocks["attn_bt"])
        self.h = torch.zeros(self.D, device=dev, dtype=torch.float32)
        self.q = torch.zeros(self.NH, self.HD, device=dev, dtype=torch.float32)  # the row's q, after rope
        self.part = torch.zeros(self.NH, self.chunks, self.HD + 2, device=dev, dtype=torch.float32)
        self.act = torch.zeros(self.FF, device=dev, dtype=torch.float32)
        if mode == "frame":
            self._frame_init()

    def _frame_init(self) -> None:
        eps = set(self.eps1 + self.eps2)
        if len(eps) != 1:
            raise ValueError(f"the persistent kernel takes one rms-norm epsilon for every layer, got {sorted(eps)}")
        kinds = (self.qkv, self.o, self.gu, self.down, self.bb.kv)
        if len({t.dtype for ts in kinds for t in ts}) != 1:
            raise ValueError("the persistent backbone kernel needs one dtype for all weights and KV caches")
        # per kind, the lowest-addressed layer's tensor is the base, and off[layer, kind] each layer's element offset
        # from it (non-negative: no wrap-around of unsigned pointer arithmetic in Triton's interpreter)
        self.bases, offsets = [], []
        for ts in kinds:
            base = min(ts, key=lambda t: t.data_ptr())
            self.bases.append(base)
            gaps = [t.data_ptr() - base.data_ptr() for t in ts]
            if any(gap % t.element_size() for gap, t in zip(gaps, ts)):
                raise ValueError("a backbone tensor is not aligned to its element size")
            offsets.append([gap // t.element_size() for gap, t in zip(gaps, ts)])
        self.offsets = torch.tensor(offsets, dtype=torch.int64).t().contiguous().to(self.device)  # (layers, 5)
        # Triton specialises a pointer argument as 16-byte aligned; a loaded offset must say so itself
        size = self.qkv[0].element_size()
        aligned = all(t.data_ptr() % 16 == 0 for ts in kinds for t in ts)
        self.align = 16 // size if aligned else 1
        self.norm1_all = torch.stack(self.norm1).contiguous()
        self.norm2_all = torch.stack(self.norm2).contiguous()
        # barrier arrivals, programs done, a flag set when a barrier gave up waiting (see barrier_timed_out), and
        # the barriers the last launch passed
        self.sync = torch.zeros(4, device=self.device, dtype=torch.int32)
        self.times = torch.zeros(2 * self.barriers_per_frame() + 4, device=self.device, dtype=torch.int64)
        self.grid = self._frame_grid()

    def _frame_grid(self) -> int:
        """Programs of the persistent kernel: at most one per SM (all resident, for the barriers), and no more than
        the largest phase has blocks. One in the interpreter (it runs programs one after another)."""
        if self.device.type != "cuda":
            return 1
        b, cd = self.blocks, lambda a, n: -(-a // n)
        most = max(cd((self.NH + 2 * self.NKV) * self.HD // 2, b["qkv_bp"]), self.NKV * self.chunks,
                   cd(self.D, b["o_bn"]), cd(self.FF, b["gu_bn"]), cd(self.D, b["down_bn"]))
        return max(1, min(most, torch.cuda.get_device_properties(self.device).multi_processor_count))

    def phase_times(self) -> dict:
        """Where the last launch of the persistent kernel (launched with timing=1) went, per phase: see
        kernels.phase_breakdown."""
        if self.mode != "frame" or not self.blocks.get("timing"):
            raise ValueError("phase times need the persistent backbone launched with timing=1")
        layer = ["q|k|v", "attention", "merge + o", "gate|up", "down"]
        return K.phase_breakdown(self.times.tolist(), (["input row"] + layer * len(self.qkv))[:-1], tail="down")

    def barriers_per_frame(self) -> int:
        """Grid-wide barriers one frame waits at (mode ``frame``: after the input row and each phase of each layer,
        but the last, whose end is the launch's), else 0."""
        return 5 * len(self.qkv) if self.mode == "frame" else 0

    def barrier_timed_out(self) -> bool:
        """Whether a launch of the persistent kernel gave up waiting at a grid barrier (its programs were not all
        resident at once): its output is garbage. Reading it syncs with the device; check after warm-up."""
        return self.mode == "frame" and bool(self.sync[2].item())

    def run(self, emb: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """emb (1, 1, D) in the model dtype, pos (1,) long -> the final-normed hidden state (1, D), model dtype."""
        if self.mode == "frame":
            self._frame(emb, pos)
        else:
            self.h.copy_(emb.reshape(-1))
            for i in range(len(self.qkv)):
                self._layer(i, pos)
        return F.rms_norm(self.h, (self.D,), self.final_norm, self.final_eps).to(emb.dtype)[None]

    def _layer(self, i: int, pos: torch.Tensor) -> None:
        b, D, NH, NKV, HD, L, FF = self.blocks, self.D, self.NH, self.NKV, self.HD, self.L, self.FF
        nw = b["num_warps"]
        kv = self.bb.kv[i]  # (2, 1, NKV, L, HD): K heads then V heads, as the kernels index (2 * NKV, L, HD)
        pairs = (NH + 2 * NKV) * (HD // 2)
        K.launch("_norm_qkv_cache", (-(-pairs // b["qkv_bp"]),), self.h, self.norm1[i], self.eps1[i], self.qkv[i],
                 self.qkv[i], self.q, kv, pos, self.cos, self.sin, D=D, NH=NH, NKV=NKV, HD=HD, QL=1, L=L,
                 BP=b["qkv_bp"], BK=b["qkv_bk"], ROPE=True, HAS_SCALE=False, num_warps=nw)
        K.launch("_attn_split", (NKV, self.chunks), self.q, kv, pos, self.part, self.scaling, NH=NH, NKV=NKV, HD=HD,
                 L=L, BT=b["attn_bt"], BHD=K.next_pow2(HD), num_warps=nw)
        K.launch("_attn_combine_o_residual", (-(-D // b["o_bn"]),), self.part, pos, self.o[i], self.o[i], self.h,
                 D=D, NH=NH, HD=HD, L=L, BT=b["attn_bt"], BC=K.next_pow2(self.chunks), BHD=K.next_pow2(HD),
                 BN=b["o_bn"], HAS_SCALE=False, num_warps=nw)
        K.launch("_norm_gateup_swiglu", (-(-FF // b["gu_bn"]),), self.h, self.norm2[i], self.eps2[i], self.gu[i],
                 self.gu[i], self.act, D=D, FF=FF, BN=b["gu_bn"], BK=b["gu_bk"], HAS_SCALE=False, num_warps=nw)
        K.launch("_down_residual", (-(-D // b["down_bn"]),), self.act, self.down[i], self.down[i], self.h, D=D, FF=FF,
                 BN=b["down_bn"], BK=b["down_bk"], HAS_SCALE=False, num_warps=nw)

    def _frame(self, emb: torch.Tensor, pos: torch.Tensor) -> None:
        b = self.blocks
        K.launch("_backbone_frame", (self.grid,), emb.reshape(-1), pos, *self.bases, self.offsets, self.norm1_all,
                 self.norm2_all, self.eps1[0], self.cos, self.sin, self.scaling, self.h, self.q, self.part, self.act,
                 self.sync, self.times, D=self.D, NH=self.NH, NKV=self.NKV, HD=self.HD, FF=self.FF, NL=len(self.qkv),
                 L=self.L,
                 BP=b["qkv_bp"], BKA=b["qkv_bk"], BT=b["attn_bt"], BC=K.next_pow2(self.chunks), BNO=b["o_bn"],
                 BNG=b["gu_bn"], BKG=b["gu_bk"], BND=b["down_bn"], BKD=b["down_bk"], BHD=K.next_pow2(self.HD),
                 BD=K.next_pow2(self.D), ALIGN=self.align, MAX_SPINS=MAX_SPINS, PREFETCH=int(b.get("prefetch", 0)),
                 SA=b.get("qkv_stages", 1), SO=b.get("o_stages", 1), SG=b.get("gu_stages", 1),
                 SD=b.get("down_stages", 1), TIMING=int(b.get("timing", 0)),
                 num_warps=b["num_warps"], maxnreg=b.get("maxnreg"))
