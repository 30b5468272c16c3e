"""The backbone's one-row step (a frame's 16 CSM-1B layers) through Triton kernels: 5 launches per layer instead of
the torch fast path's 13 operators.

    _norm_qkv_cache           rms-norm(h) -> q|k|v GEMV -> rope in the kernel -> q to scratch, k and v into the
                              backbone's own KV cache (the one its torch prefill writes: prompts stay on torch)
    _attn_split               attention split over (KV head, chunk of BT positions) up to the row's position: each
                              program's partial max, sum and weighted V (flash-decoding)
    _attn_combine_o_residual  every program merges the partials of every head, o-proj rows -> h +=
    _norm_gateup_swiglu       as in the depth decoder (fern.tts.csm.kernels)
    _down_residual            as in the depth decoder

Why: with the depth decoder one launch (``tts.kernels=persistent``), 236 of a frame's 237 kernels are the backbone's.
Whether fewer of them pay off on a GPU is for ``fern.bench.tts`` to say (``backbone_ms_per_frame``); this is the
candidate it measures. The final norm, codebook 0's head and sampling stay torch (a handful of kernels). The
residual stream and scratch are fp32; weights are the model's own (no copy). Grids are fixed whatever the position
(chunks past it return at once), so a frame is graph-capturable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fern.tts.csm import kernels as K

# many programs on a GPU (bandwidth needs them); one per kernel where the shapes allow in the interpreter (each
# program costs milliseconds there). Not tuned on a GPU yet. BT: positions per attention chunk
GPU_BLOCKS = dict(qkv_bp=8, qkv_bk=256, attn_bt=64, o_bn=16, gu_bn=32, gu_bk=128, down_bn=8, down_bk=512, num_warps=4)


class FusedBackbone:
    """``run(emb, pos)``: the backbone's hidden state (normed) for one row at position ``pos``, through the kernels
    above, writing that row's K/V into ``engine.bb``'s cache."""

    def __init__(self, engine, blocks: dict | None = None):
        bb = engine.bb
        if not bb.fused:
            raise ValueError("the fused backbone needs plain Linear layers (no unmerged LoRA)")
        self.bb = bb
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
        if dev.type == "cuda":
            self.blocks = dict(GPU_BLOCKS, **(blocks or {}))
        else:
            self.blocks = dict(qkv_bp=p2((self.NH + 2 * self.NKV) * self.HD // 2), qkv_bk=p2(self.D),
                               attn_bt=min(64, p2(self.L)), o_bn=p2(self.D), gu_bn=p2(self.FF), gu_bk=p2(self.D),
                               down_bn=p2(self.D), down_bk=p2(self.FF), num_warps=4)
            self.blocks.update(blocks or {})
        self.chunks = -(-self.L // self.blocks["attn_bt"])
        self.h = torch.zeros(self.D, device=dev, dtype=torch.float32)
        # q of every position: the kernel writes a head's q at its row's position, like the depth decoder's buffer
        # (16 MB for CSM-1B in fp32); only the current row's is read
        self.q = torch.zeros(self.NH, self.L, self.HD, device=dev, dtype=torch.float32)
        self.part = torch.zeros(self.NH, self.chunks, self.HD + 2, device=dev, dtype=torch.float32)
        self.act = torch.zeros(self.FF, device=dev, dtype=torch.float32)

    def run(self, emb: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """emb (1, 1, D) in the model dtype, pos (1,) long -> the final-normed hidden state (1, D), model dtype."""
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
                 self.qkv[i], self.q, kv, pos, self.cos, self.sin, D=D, NH=NH, NKV=NKV, HD=HD, L=L, BP=b["qkv_bp"],
                 BK=b["qkv_bk"], ROPE=True, HAS_SCALE=False, num_warps=nw)
        K.launch("_attn_split", (NKV, self.chunks), self.q, kv, pos, self.part, self.scaling, NH=NH, NKV=NKV, HD=HD,
                 L=L, BT=b["attn_bt"], BHD=K.next_pow2(HD), num_warps=nw)
        K.launch("_attn_combine_o_residual", (-(-D // b["o_bn"]),), self.part, pos, self.o[i], self.o[i], self.h,
                 D=D, NH=NH, HD=HD, L=L, BT=b["attn_bt"], BC=K.next_pow2(self.chunks), BHD=K.next_pow2(HD),
                 BN=b["o_bn"], HAS_SCALE=False, num_warps=nw)
        K.launch("_norm_gateup_swiglu", (-(-FF // b["gu_bn"]),), self.h, self.norm2[i], self.eps2[i], self.gu[i],
                 self.gu[i], self.act, D=D, FF=FF, BN=b["gu_bn"], BK=b["gu_bk"], HAS_SCALE=False, num_warps=nw)
        K.launch("_down_residual", (-(-D // b["down_bn"]),), self.act, self.down[i], self.down[i], self.h, D=D, FF=FF,
                 BN=b["down_bn"], BK=b["down_bk"], HAS_SCALE=False, num_warps=nw)
