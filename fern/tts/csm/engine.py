"""CSM generation loop over the modules of a transformers ``CsmForConditionalGeneration``.

Why our own loop: the stock ``generate`` runs a dynamic cache, a fresh ``depth_decoder.generate`` per frame and a host
round trip per token (~185 ms/frame on an H100). Here each frame is one fixed computation on static buffers:

    emb_in @ pos -> backbone (static KV cache, 1 row) -> lm_head -> sample c0
                 -> depth decoder (own static cache, positions 0..31 fixed) -> sample c1..c31
                 -> frame_out, emb_in <- embed(frame_out), pos += 1

so on CUDA the whole frame is captured once as a CUDA graph and replayed; the host reads 32 ints per frame (EOS check +
what the Mimi decode needs). At batch 1 a frame costs what its ~1 750 small kernels (``fern.bench.opcount``) cost to
run one after another, far more than its weights take to read, so the fast path (see ``_Stack``) is written to launch
as few kernels as it can: it runs the model's own weights (after any LoRA merge) through fused functional ops, and
falls back to calling the transformers modules where a layer is not a plain Linear (an unmerged peft adapter).
Sampling is Gumbel-max over the top-k, with the noise for the whole frame drawn at once.

Context: the cache holds a list of committed segments (voice prompt, then earlier utterances); a new utterance reuses
the longest common prefix of segments already in the cache (the voice prompt's KV prefix is computed once per session)
and only prefills what changed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Segment:
    """Backbone rows of one turn: text tokens, then audio frames (ending with the all-zero EOS frame)."""

    text_ids: torch.Tensor  # (n,) long
    audio: torch.Tensor | None = None  # (frames, num_codebooks) long

    def __len__(self) -> int:
        return int(self.text_ids.numel()) + (0 if self.audio is None else int(self.audio.shape[0]))


def _with_attention_kernels(fn):
    """Run ``fn`` with the SDPA kernels the engine may use: flash, memory-efficient, math; not cuDNN. torch 2.9
    tries cuDNN first on Hopper, and its kernels misbehave under CUDA graph capture for query lengths not divisible
    by 128 (ours are 1 and 2; pytorch#169849, off by default from 2.10). The memory-efficient kernel takes these
    calls as they are. Set around whole frames and prefills, outside compiled code, so compile traces this choice."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return fn(*args, **kwargs)

    return wrapper


def _plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear and m.bias is None


class _Stack:
    """A decoder stack (layers + final norm) run with our static KV cache and SDPA.

    At batch 1 a frame is bound by the number of kernels (31 depth steps x 4 layers + 16 backbone layers), so the
    fast path (plain Linear layers: no unmerged LoRA) spends as few as it can per layer:

    - q/k/v and gate/up weights are re-laid out as one contiguous tensor each; the modules' weights become views of
      it (no extra memory), so a layer is 4 GEMMs instead of 7;
    - the o and down projections add into the residual stream inside the GEMM (in-place ``addmm_``);
    - RMSNorm is ``F.rms_norm`` (one fused kernel on CUDA);
    - rope runs once over all of q|k|v with per-head tables (v heads: cos 1, sin 0, i.e. untouched) as
      ``x*cos + roll(x)*sin_signed``, which leaves k|v adjacent so one ``index_copy_`` writes both caches;
    - the causal mask (additive) and the rope rows are gathered once per forward, or precomputed by the caller for
      fixed positions (the depth decoder's), where rope can even be folded into the q|k|v weights
      (:meth:`qkv_rotated_at`).
    Per layer and one-row step that is 13 operators (10 with folded rope), against ~38 through the modules.
    """

    def __init__(self, layers, norm, rotary, config, max_len: int, device, dtype, fast: bool = True):
        self.layers = list(layers)
        self.norm = norm
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.hidden = config.hidden_size
        self.max_len = max_len
        n, nh, nkv, hd = len(self.layers), self.n_heads, self.n_kv, self.head_dim
        # per layer one buffer for both caches: [0] is K, [1] is V, each (1, nkv, max_len, hd). One tensor per
        # layer, not one for all: torch.compile writes a compiled step's cache row in place only into a whole
        # input tensor (into a view of one it copies the whole tensor)
        self.kv = [torch.zeros(2, 1, nkv, max_len, hd, device=device, dtype=dtype) for _ in range(n)]
        if torch.device(device).type == "meta":  # shapes only (fern.bench.ptx); autocast has no meta device
            cos = sin = torch.zeros(1, max_len, self.head_dim, device=device, dtype=dtype)
        else:
            with torch.no_grad():
                dummy = torch.zeros(1, 1, 1, device=device, dtype=dtype)
                cos, sin = rotary(dummy, torch.arange(max_len, device=device)[None])
        self.cos, self.sin = cos[0], sin[0]  # (max_len, head_dim), computed like transformers (fp32, then cast)
        self.mask_table = torch.full((max_len, max_len), float("-inf"), device=device, dtype=dtype).triu_(1)
        fusable = hasattr(F, "rms_norm") and config.hidden_act == "silu" and all(
            _plain_linear(m)
            for layer in self.layers
            for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                      layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        )
        if fusable:
            # also for the module path: the weights are re-laid out once per model, whichever engine comes first,
            # so no later engine frees weights an earlier engine's CUDA graph reads
            self._fuse()
        self.fused = fast and fusable
        if self.fused:
            half = hd // 2
            sign = torch.cat([-torch.ones(half), torch.ones(hd - half)]).to(device=device, dtype=dtype)
            self.rope_cos = torch.ones(max_len, nh + 2 * nkv, hd, device=device, dtype=dtype)
            self.rope_sin = torch.zeros(max_len, nh + 2 * nkv, hd, device=device, dtype=dtype)
            self.rope_cos[:, : nh + nkv] = self.cos[:, None]
            self.rope_sin[:, : nh + nkv] = (self.sin * sign)[:, None]

    @torch.no_grad()
    def _fuse(self) -> None:
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            layer._fern_qkv = _concat_as_views([a.q_proj, a.k_proj, a.v_proj])
            layer._fern_gu = _concat_as_views([m.gate_proj, m.up_proj])

    def rows(self, pos: torch.Tensor, kv_len: int | None = None) -> tuple[torch.Tensor, ...]:
        """What a forward over rows at positions ``pos`` needs besides the hidden states, gathered once per forward
        (not per layer): (pos, additive causal mask over the first ``kv_len`` cache slots, rope cos, rope sin)."""
        L = self.max_len if kv_len is None else kv_len
        mask = self.mask_table[pos, :L][None, None]  # (1, 1, T, L)
        if self.fused:
            return pos, mask, self.rope_cos[pos][None], self.rope_sin[pos][None]  # (1, T, heads, hd)
        return pos, mask, self.cos[pos][None, None], self.sin[pos][None, None]

    def forward(self, h: torch.Tensor, pos: torch.Tensor, kv_len: int | None = None) -> torch.Tensor:
        """h: (1, T, D) rows at positions ``pos`` (T,) -> normed hidden (1, T, D). Writes the rows' K/V."""
        return self.run(h, *self.rows(pos, kv_len))

    def run(self, h, pos, mask, cos, sin, qkv_rotated=None) -> torch.Tensor:
        """:meth:`forward` with the rows' tensors given (precomputed for fixed positions); tensors only, so
        ``torch.compile`` guards on shapes, not on objects. ``qkv_rotated``: per-layer q|k|v weights with the rope
        of the (single, fixed) position folded in (:meth:`qkv_rotated_at`)."""
        if self.fused:
            return self._forward_fused(h, pos, mask, cos, sin, qkv_rotated)
        return self._forward_modules(h, pos, mask, cos, sin)

    @torch.no_grad()
    def qkv_rotated_at(self, position: int) -> tuple[torch.Tensor, ...]:
        """Each layer's q|k|v weight with the rope of ``position`` folded in. Rope is linear in the projected row,
        so for a position known in advance (the depth decoder's) it can be applied to the weight's rows once,
        here, instead of to every projected row: three kernels fewer per layer and step. Costs one q|k|v weight
        per layer and position (CSM-1B's depth decoder: ~380 MB in bf16 for positions 2..31)."""
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        cos = self.cos[position].float()[:, None]  # (hd, 1): scales the rows of each head's block
        sin = self.sin[position].float()[:, None]
        out = []
        for layer in self.layers:
            w = layer._fern_qkv.float().view(nh + 2 * nkv, hd, -1)
            qk = w[: nh + nkv]
            half = hd // 2
            rot = torch.cat((-qk[:, half:], qk[:, :half]), dim=1)
            w = torch.cat([qk * cos + rot * sin, w[nh + nkv :]])
            out.append(w.reshape(layer._fern_qkv.shape).to(layer._fern_qkv.dtype))
        return tuple(out)

    def _attend(self, q, kc, vc, mask):
        """q (1, nh, T, hd) against the cache slices kc/vc (1, nkv, L, hd)."""
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        rep = nh // nkv
        if q.shape[2] == 1 and rep > 1:
            # GQA decode without copying K/V: the query heads of one KV group become that group's "rows"
            return F.scaled_dot_product_attention(
                q.reshape(1, nkv, rep, hd), kc, vc, attn_mask=mask, scale=self.scaling
            ).reshape(1, nh, 1, hd)
        if rep > 1:
            kc = kc.repeat_interleave(rep, dim=1)
            vc = vc.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, scale=self.scaling)

    def _forward_fused(self, h, pos, mask, cos, sin, qkv_rotated=None) -> torch.Tensor:
        T, D = h.shape[1], self.hidden
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        L = mask.shape[-1]
        half = hd // 2
        # the residual stream is updated in place by the o/down GEMMs (addmm_ with beta=1: one kernel; an
        # out-of-place addmm would first copy the residual); cloned once so the caller's input is left alone
        h = h.reshape(T, D).clone()
        for i, layer in enumerate(self.layers):
            norm1, norm2 = layer.input_layernorm, layer.post_attention_layernorm
            x = F.rms_norm(h, (D,), norm1.weight, norm1.variance_epsilon)
            if qkv_rotated is None:
                qkv = F.linear(x, layer._fern_qkv).view(1, T, nh + 2 * nkv, hd)
                qkv = torch.addcmul(qkv * cos, qkv.roll(half, -1), sin)
            else:
                qkv = F.linear(x, qkv_rotated[i]).view(1, T, nh + 2 * nkv, hd)
            kv_new = qkv[:, :, nh:].view(1, T, 2, nkv, hd).permute(2, 0, 3, 1, 4)  # (2, 1, nkv, T, hd)
            kv = self.kv[i]
            kv.index_copy_(3, pos, kv_new)
            q = qkv[:, :, :nh].transpose(1, 2)
            o = self._attend(q, kv[0, :, :, :L], kv[1, :, :, :L], mask)
            h.addmm_(o.transpose(1, 2).reshape(T, nh * hd), layer.self_attn.o_proj.weight.t())
            x = F.rms_norm(h, (D,), norm2.weight, norm2.variance_epsilon)
            g, u = F.linear(x, layer._fern_gu).chunk(2, dim=-1)
            h.addmm_(F.silu(g) * u, layer.mlp.down_proj.weight.t())
        return F.rms_norm(h, (D,), self.norm.weight, self.norm.variance_epsilon).view(1, T, D)

    def _forward_modules(self, h, pos, mask, cos, sin) -> torch.Tensor:
        """The reference path through the modules themselves (used when a layer is not a plain Linear, e.g. an
        unmerged LoRA adapter)."""
        T = h.shape[1]
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        L = mask.shape[-1]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(1, T, nh, hd).transpose(1, 2)
            k = attn.k_proj(x).view(1, T, nkv, hd).transpose(1, 2)
            v = attn.v_proj(x).view(1, T, nkv, hd).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            self.kv[i][0].index_copy_(2, pos, k)
            self.kv[i][1].index_copy_(2, pos, v)
            o = self._attend(q, self.kv[i][0, :, :, :L], self.kv[i][1, :, :, :L], mask)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(1, T, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.norm(h)


def _concat_as_views(linears) -> torch.Tensor:
    """One contiguous weight for several Linear layers; each layer's weight becomes a view of its rows.

    If the weights already are consecutive rows of one tensor (an earlier engine over the same model fused them),
    that tensor is returned as is: reallocating it would free memory an earlier engine's CUDA graph still reads."""
    first = linears[0].weight
    storage = first.untyped_storage()
    ptr, rows = first.data_ptr(), 0
    contiguous_run = len({m.weight.shape[1] for m in linears}) == 1
    for m in linears:
        w = m.weight
        # adjacent addresses are not enough: the CUDA caching allocator packs separate small tensors back to back
        if (not contiguous_run or not w.is_contiguous() or w.untyped_storage().data_ptr() != storage.data_ptr()
                or w.data_ptr() != ptr + rows * w.shape[1] * w.element_size()):
            contiguous_run = False
            break
        rows += w.shape[0]
    end = ptr + rows * first.shape[1] * first.element_size()
    if contiguous_run and end <= storage.data_ptr() + storage.nbytes():
        return first.detach().as_strided((rows, first.shape[1]), (first.shape[1], 1))
    w = torch.cat([m.weight.detach() for m in linears]).contiguous()
    row = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight = torch.nn.Parameter(w[row : row + n], requires_grad=False)
        row += n
    return w


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


KERNELS = ("torch", "triton", "persistent", "auto")
BACKBONE_KERNELS = ("torch", "triton", "persistent", "auto")


class CsmEngine:
    """Owns the static caches and the per-frame computation; yields frames of codebook ids."""

    def __init__(self, model, *, cuda_graphs: bool = False, compile: bool = False, fast: bool = True,
                 kernels: str = "torch", weights: str = "bf16", blocks: dict | None = None,
                 backbone_kernels: str = "torch", backbone_blocks: dict | None = None,
                 barrier_fallback: bool | None = None):
        """``fast=False`` runs every layer through the transformers modules (the reference the fast path is tested
        against); it is chosen anyway for layers that are not plain Linear (an unmerged LoRA adapter).

        ``kernels``: ``torch`` | ``triton`` (fused steps) | ``persistent`` (the whole depth decoder of a frame as
        one Triton launch) | ``auto`` (persistent on CUDA where Triton runs, else torch) for the depth decoder
        (``fern.tts.csm.fused``); ``weights``: ``bf16`` (the model's own) | ``int8`` | ``fp8`` weight-only
        quantization of the depth decoder. Quantized weights with torch kernels run the fused path's torch reference
        (an emulation for quality checks, not faster). Triton that cannot run here falls back to torch, logged.
        ``blocks``: launch shapes of the Triton kernels over their defaults (``fused.GPU_BLOCKS`` and
        ``FRAME_GPU_BLOCKS``), for tuning on a GPU (``fern.bench.tts --variants persistent:bf16@num_warps=4``).
        ``backbone_kernels``: ``torch`` | ``triton`` (its one-row step as 5 Triton launches per layer) |
        ``persistent`` (the same as one launch) | ``auto`` (as for the depth decoder), ``fern.tts.csm.fused_backbone``;
        prompts are prefilled by torch either way. ``backbone_blocks``: their launch shapes over the defaults
        (``fused_backbone.GPU_BLOCKS`` / ``FRAME_GPU_BLOCKS``).

        ``barrier_fallback``: what a persistent kernel whose grid barrier gave up waiting (its programs were not all
        resident on this GPU, checked once after warm-up) turns into: true, that part's step kernels, logged; false,
        an error naming them. None (default): per part, true where ``auto`` chose the persistent kernel, false where
        the config named it."""
        self.model = model.eval()
        cfg = model.config
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.n_cb = cfg.num_codebooks
        self.vocab = cfg.vocab_size
        self.max_len = cfg.max_position_embeddings
        self.eos_id = cfg.codebook_eos_token_id
        bb = model.backbone_model
        dd = model.depth_decoder.model
        self.bb = _Stack(bb.layers, bb.norm, bb.rotary_emb, cfg, self.max_len, self.device, self.dtype, fast)
        self.dd = _Stack(
            dd.layers, dd.norm, dd.rotary_emb, cfg.depth_decoder_config, self.n_cb, self.device, self.dtype, fast
        )
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self.compile = bool(compile)
        # static buffers: the graph reads emb_in/pos and writes frame_out, emb_in, pos
        D = cfg.hidden_size
        self.emb_in = torch.zeros(1, 1, D, device=self.device, dtype=self.dtype)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self.frame_out = torch.zeros(1, self.n_cb, dtype=torch.long, device=self.device)
        # the depth decoder's positions are the same every frame: its masks and rope rows are gathered once here
        dd_pos = [torch.arange(0, 2, device=self.device)] + [
            torch.tensor([i], device=self.device) for i in range(2, self.n_cb)
        ]
        self._dd_rows = [self.dd.rows(p, self.n_cb) + (None,) for p in dd_pos]
        if self.dd.fused:  # one-row steps at fixed positions: rope folded into their q|k|v weights
            for step in range(1, len(self._dd_rows)):
                pos, mask, _, _, _ = self._dd_rows[step]
                self._dd_rows[step] = (pos, mask, None, None, self.dd.qkv_rotated_at(step + 1))
        depth = model.depth_decoder.model
        self._dd_embed_projected = None
        if fast and _plain_linear(depth.inputs_embeds_projector):
            # every codebook token's embedding, already projected to the depth decoder's width: a step's input is
            # one row lookup instead of a lookup plus a GEMM (n_cb * vocab rows; ~134 MB in bf16 for CSM-1B)
            with torch.no_grad():
                self._dd_embed_projected = depth.inputs_embeds_projector(depth.embed_tokens.weight)
        # per-codebook weights and embedding tables as views, handed to the step as tensors (compile guards on
        # their shapes, so one compiled step serves every codebook)
        head_w = model.depth_decoder.codebooks_head.weight  # (n_cb - 1, hidden, vocab)
        self._head_w = [head_w[i] for i in range(self.n_cb - 1)]
        table = depth.embed_tokens.weight if self._dd_embed_projected is None else self._dd_embed_projected
        self._dd_tables = [table[i * self.vocab : (i + 1) * self.vocab] for i in range(self.n_cb)]
        self.barrier_fallback = {"depth": kernels == "auto", "backbone": backbone_kernels == "auto"}
        if barrier_fallback is not None:
            self.barrier_fallback = dict.fromkeys(self.barrier_fallback, bool(barrier_fallback))
        self.depth = self._fused_depth(kernels, weights, blocks)
        if self.depth is not None and self.depth.mode == "frame":
            # the persistent kernel applies rope itself: the per-position folded q|k|v weights (~380 MB for CSM-1B in
            # bf16) would only be read by the torch frame, which this engine no longer runs
            self._dd_rows = [row[:4] + (None,) for row in self._dd_rows]
        self.kernels = "torch"
        if self.depth is not None and self.depth.backend == "triton":
            self.kernels = "persistent" if self.depth.mode == "frame" else "triton"
        self.weights = self.depth.kind if self.depth is not None else "bf16"
        self.bb_fused = self._fused_backbone(backbone_kernels, backbone_blocks)
        self.backbone_kernels = "torch"
        if self.bb_fused is not None:
            self.backbone_kernels = "persistent" if self.bb_fused.mode == "frame" else "triton"
        self._bb_step = self._backbone_step
        self._dd_step = self._depth_step
        if self.compile:  # whole steps, so sampling and the next step's input fuse with the layers
            if self.bb_fused is None:  # dynamo would trace into the Triton launches' Python side
                self._bb_step = torch.compile(self._backbone_step, dynamic=False)
            self._dd_step = torch.compile(self._depth_step, dynamic=False)
        self._graph = None
        self._barriers_checked = False
        self._graph_key = None
        self._prefill_graphs: dict = {}
        self.frame_ready = None  # CUDA event: the last yielded frame is complete
        self.lookahead = self.device.type == "cuda"  # launch frame t+1 before waiting for frame t
        self._host_frame = torch.zeros(1, self.n_cb, dtype=torch.long, pin_memory=self.device.type == "cuda")
        self.temperature = 0.0
        self.top_k = 0
        self._cached: list[Segment] = []  # segments whose K/V are in the backbone cache, from position 0
        self.stats: dict[str, float] = {}
        self._probe_auto()

    def _fused_depth(self, kernels: str, weights: str, blocks: dict | None = None):
        from fern.errors import ConfigValueError
        from fern.tts.csm import fused

        if kernels not in KERNELS:
            raise ConfigValueError(f"tts.kernels must be one of {KERNELS}, got {kernels!r}")
        if weights not in fused.WEIGHT_KINDS:
            raise ConfigValueError(f"optim.tts_weights must be one of {fused.WEIGHT_KINDS}, got {weights!r}")
        triton = kernels in ("triton", "persistent") or (kernels == "auto" and self.device.type == "cuda")
        if not (triton or weights != "bf16"):
            return None
        if not self.dd.fused or self._dd_embed_projected is None:
            log.warning("CSM depth decoder: tts.kernels=%s / weights=%s need plain Linear layers (no unmerged LoRA): "
                        "running the module path with the model's weights", kernels, weights)
            return None
        if weights == "fp8":
            why = fused.fp8_supported(self.device)
            if why:
                raise ConfigValueError(f"optim.tts_weights=fp8: float8_e4m3fn is not usable on {self.device} ({why})")
        if triton:
            from fern.tts.csm import kernels as K

            why = K.usable_on(self.device)
            if why:
                (log.info if kernels == "auto" else log.warning)(
                    "CSM depth decoder: Triton kernels unusable on %s (%s): torch kernels instead", self.device, why)
                triton = False
        if not triton and weights == "bf16":
            return None
        # the persistent kernel only where it runs compiled: its torch reference is no faster than mode "steps". auto:
        # the persistent kernels, 7.07 ms/frame on the H200 with the persistent backbone against 9.63 for the step
        # kernels and 11.03 for torch (README)
        mode = "frame" if triton and kernels in ("persistent", "auto") else "steps"
        try:
            depth = fused.FusedDepth(self, "triton" if triton else "torch", weights, blocks=blocks, mode=mode)
        except ValueError as exc:  # a model the persistent kernel does not take (e.g. per-layer norm epsilons)
            if kernels != "auto" or mode != "frame":
                raise
            log.warning("CSM depth decoder: no persistent kernel for this model (%s): the step kernels", exc)
            depth = fused.FusedDepth(self, "triton", weights, mode="steps")
        log.info("CSM depth decoder: %s kernels (%s), %s weights (%.0f MB read per frame)", depth.backend, mode,
                 weights, depth.weight_bytes_per_frame() / 1e6)
        if not triton:
            log.warning("optim.tts_weights=%s with torch kernels: an fp32 emulation of the quantized weights "
                        "(quality checks), slower than the unquantized path", weights)
        return depth

    def _fused_backbone(self, backbone_kernels: str, blocks: dict | None = None):
        from fern.errors import ConfigValueError

        if backbone_kernels not in BACKBONE_KERNELS:
            raise ConfigValueError(f"tts.backbone_kernels must be one of {BACKBONE_KERNELS}, got {backbone_kernels!r}")
        if backbone_kernels == "auto" and self.device.type != "cuda":
            return None  # launch shapes, if any, are for the GPU auto would use them on (as the depth decoder's)
        if backbone_kernels == "torch":
            if blocks:
                raise ConfigValueError(f"backbone launch shapes {sorted(blocks)} need tts.backbone_kernels=triton or "
                                       "persistent, not torch")
            return None
        if not self.bb.fused:
            log.warning("CSM backbone: tts.backbone_kernels=%s needs plain Linear layers (no unmerged LoRA): "
                        "torch instead", backbone_kernels)
            return None
        from fern.tts.csm import kernels as K
        from fern.tts.csm.fused_backbone import FusedBackbone

        why = K.usable_on(self.device)
        if why:
            (log.info if backbone_kernels == "auto" else log.warning)(
                "CSM backbone: Triton kernels unusable on %s (%s): torch instead", self.device, why)
            return None
        try:
            return FusedBackbone(self, blocks=blocks, mode="layers" if backbone_kernels == "triton" else "frame")
        except ValueError as exc:  # a model the persistent kernel does not take (e.g. per-layer norm epsilons)
            if backbone_kernels != "auto":
                raise
            log.warning("CSM backbone: no persistent kernel for this model (%s): the step kernels", exc)
            return FusedBackbone(self, mode="layers")

    # ---- embeddings -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_segment(self, seg: Segment) -> torch.Tensor:
        parts = []
        if seg.text_ids.numel():
            parts.append(self.model.embed_text_tokens(seg.text_ids.to(self.device)[None]))
        if seg.audio is not None and seg.audio.shape[0]:
            parts.append(self.model.backbone_model.embed_tokens(seg.audio.to(self.device)[None]))
        return torch.cat(parts, dim=1)

    # ---- per-frame computation (graph-capturable: no host sync, fixed shapes) ---------------------------------
    def _frame_noise(self, rows: int | None = None) -> torch.Tensor | None:
        """Gumbel noise for the whole frame, scaled by the temperature: one row per codebook, one column per top-k
        candidate. ``argmax(logit + T * G)`` samples ``softmax(logit / T)`` exactly (the Gumbel-max trick) with no host
        sync, so it is graph-safe, and drawing it once per frame saves kernels in each of the 32 steps."""
        if self.temperature <= 0:
            return None
        k = self.top_k if 0 < self.top_k < self.vocab else self.vocab
        # rows padded to 16 bytes: a compiled step copies any input that is not 16-byte aligned
        noise = torch.empty(rows or self.n_cb, -(-k // 4) * 4, device=self.device, dtype=torch.float32).exponential_(1)
        return noise.log_().mul_(-self.temperature)[:, :k]

    @staticmethod
    def _sample(logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """logits (rows, vocab) -> token ids (rows,): greedy without noise, else top-k then Gumbel-max."""
        if noise is None:
            return logits.argmax(dim=-1)
        if noise.shape[-1] < logits.shape[-1]:
            top, ids = torch.topk(logits, noise.shape[-1], dim=-1)
            return ids.gather(-1, (top + noise).argmax(dim=-1, keepdim=True))[..., 0]
        return (logits + noise).argmax(dim=-1)

    def _depth_input(self, c: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """The depth decoder's input row (1, 1, depth hidden) for token ``c`` of the codebook whose (projected, on
        the fast path) embedding table is ``table``."""
        x = F.embedding(c, table)[:, None]
        if self._dd_embed_projected is None:
            x = self.model.depth_decoder.model.inputs_embeds_projector(x)
        return x

    def _backbone_step(self, emb, pos, noise, table):
        """Backbone row -> codebook 0 and the depth decoder's first input (positions 0: the backbone state, 1: c0)."""
        model = self.model
        h = self.bb_fused.run(emb, pos) if self.bb_fused is not None else self.bb.forward(emb, pos)[:, -1]  # (1, D)
        c = self._sample(model.lm_head(h), noise)  # (1,)
        x = torch.cat([model.depth_decoder.model.inputs_embeds_projector(h)[:, None], self._depth_input(c, table)], 1)
        return c, x

    def _depth_step(self, x, pos, mask, cos, sin, qkv_rotated, head_w, noise, table):
        """One depth-decoder step -> this codebook's token and the next step's input row."""
        y = self.dd.run(x, pos, mask, cos, sin, qkv_rotated)[:, -1]
        c = self._sample(y @ head_w, noise)
        return c, self._depth_input(c, table)

    @_with_attention_kernels
    def _frame(self) -> None:
        if self.depth is not None:
            self._frame_fused()
            return
        noise = self._frame_noise()
        rows = [None] * self.n_cb if noise is None else noise.unbind(0)
        c, x = self._bb_step(self.emb_in, self.pos, rows[0], self._dd_tables[0])
        codes = [c]
        for i in range(1, self.n_cb):
            # the last step's "next input" (codebook 31's table) is unused: one lookup, for one step shape for all
            c, x = self._dd_step(x, *self._dd_rows[i - 1], self._head_w[i - 1], rows[i], self._dd_tables[i])
            codes.append(c)
        frame = torch.stack(codes, dim=1)  # (1, n_cb)
        self.frame_out.copy_(frame)
        self.emb_in.copy_(self.model.backbone_model.embed_tokens(frame[:, None]))
        self.pos.add_(1)

    def _frame_fused(self) -> None:
        """The backbone as in :meth:`_frame`, codebooks 1.. through the fused depth decoder. Its sampler takes one
        noise value per vocabulary entry (see ``fused.sample_fused``): same distribution, other draws."""
        noise0 = self._frame_noise(rows=1)
        c, x = self._bb_step(self.emb_in, self.pos, None if noise0 is None else noise0[0], self._dd_tables[0])
        noise = None
        if self.temperature > 0:
            noise = torch.empty(self.n_cb - 1, self.vocab, device=self.device, dtype=torch.float32)
            noise.exponential_(1).log_().mul_(-self.temperature)
        frame = self.depth.run(x, c, noise, self.top_k)
        self.frame_out.copy_(frame)
        self.emb_in.copy_(self.model.backbone_model.embed_tokens(frame[:, None]))
        self.pos.add_(1)

    _PARTS = (("depth", "depth decoder", "tts.kernels"), ("backbone", "backbone", "tts.backbone_kernels"))

    def _persistent(self, key: str):
        part = self.depth if key == "depth" else self.bb_fused
        return part if part is not None and part.mode == "frame" and part.backend == "triton" else None

    def _to_step_kernels(self, key: str) -> None:
        """Replace a persistent part by its step kernels (same math, one launch per phase: no grid barrier)."""
        if key == "depth":
            from fern.tts.csm.fused import FusedDepth

            self.depth, self.kernels = FusedDepth(self, "triton", self.weights, mode="steps"), "triton"
        else:
            from fern.tts.csm.fused_backbone import FusedBackbone

            self.bb_fused, self.backbone_kernels = FusedBackbone(self, mode="layers"), "triton"
        self._graph = None  # a captured frame launches the replaced kernel

    @torch.no_grad()
    def _check_barriers(self, mark: bool = True) -> bool:
        """A persistent kernel that gave up waiting at a grid barrier (its output is garbage) is refused, or, with
        ``barrier_fallback``, replaced by its step kernels. Checked at the auto probe, after the warm-up before graph
        capture or after the first eager frame, and after each utterance (reading the flag syncs). Returns whether a
        part was replaced: the frames run since are to be run again."""
        if mark:
            self._barriers_checked = True
        replaced = False
        for key, what, setting in self._PARTS:
            part = self._persistent(key)
            if part is None or not part.barrier_timed_out():
                continue
            message = (f"CSM {what}: the persistent kernel gave up waiting at a grid barrier, so its programs were "
                       f"not all resident on this GPU")
            if not self.barrier_fallback[key]:
                raise RuntimeError(f"{message} ({setting}=persistent); use {setting}=triton")
            log.warning("%s: its step kernels instead (%s=triton)", message, setting)
            self._to_step_kernels(key)
            replaced = True
        return replaced

    @torch.no_grad()
    def _probe_auto(self) -> None:
        """auto: one frame now, so that persistent kernels that do not compile or launch on this GPU (registers,
        shared memory) or whose barriers give up are replaced by their step kernels before any audio depends on
        them. The frame's state is restored; its K/V row is rewritten by the first prefill."""
        keys = [key for key, _, _ in self._PARTS if self.barrier_fallback[key] and self._persistent(key) is not None]
        if not keys:
            return
        saved = (self.emb_in.clone(), self.pos.clone())
        try:
            self._frame()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:  # noqa: BLE001 - Triton's compile and launch errors have no common base
            log.warning("CSM: the persistent kernels failed their first frame on %s (%s: %s): their step kernels "
                        "instead", self.device, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            for key in keys:
                self._to_step_kernels(key)
        else:
            self._check_barriers(mark=False)
        finally:
            self.emb_in.copy_(saved[0])
            self.pos.copy_(saved[1])

    def _run_frame(self) -> None:
        if not self.cuda_graphs:
            saved = None if self._barriers_checked else (self.emb_in.clone(), self.pos.clone())
            self._frame()
            if saved is not None and self._check_barriers():
                self.emb_in.copy_(saved[0])  # the frame again, with the kernels that replaced the failed ones
                self.pos.copy_(saved[1])
                self._frame()
            return
        key = (self.temperature, self.top_k)
        if self._graph is None or self._graph_key != key:
            self._capture(key)
        self._graph.replay()

    def _capture(self, key) -> None:
        import time

        t0 = time.perf_counter()
        saved = (self.emb_in.clone(), self.pos.clone())
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        while True:
            with torch.cuda.stream(s):
                for _ in range(3):  # warm-up (and compilation) outside the graph
                    self.emb_in.copy_(saved[0])
                    self.pos.copy_(saved[1])
                    self._frame()
            torch.cuda.current_stream().wait_stream(s)
            if not self._check_barriers():  # a replaced kernel warms up again
                break
        self.emb_in.copy_(saved[0])
        self.pos.copy_(saved[1])
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._frame()
        self.emb_in.copy_(saved[0])
        self.pos.copy_(saved[1])
        torch.cuda.synchronize()
        self._graph, self._graph_key = graph, key
        self.stats["graph_capture_s"] = time.perf_counter() - t0
        log.info("CSM frame graph captured in %.2f s", self.stats["graph_capture_s"])

    # ---- context / prefill ------------------------------------------------------------------------------------
    PREFILL_BUCKETS = (8, 16, 32, 64, 128, 256, 512)

    @torch.no_grad()
    @_with_attention_kernels
    def _prefill_rows(self, emb: torch.Tensor, start: int) -> None:
        T = emb.shape[1]
        if T == 0:
            return
        bucket = next((b for b in self.PREFILL_BUCKETS if b >= T), None)
        if self.cuda_graphs and bucket is not None and start + bucket <= self.max_len:
            # padded to a bucket and replayed as a graph: the pad rows write K/V past the real rows, which every
            # later row overwrites before any query can see it (queries only see positions <= their own)
            graph, buf_emb, buf_pos = self._prefill_graph(bucket)
            buf_emb[:, :T].copy_(emb)
            buf_emb[:, T:].zero_()
            torch.arange(start, start + bucket, out=buf_pos)
            graph.replay()
            return
        pos = torch.arange(start, start + T, device=self.device)
        self.bb.forward(emb, pos)

    def _prefill_graph(self, bucket: int):
        if bucket not in self._prefill_graphs:
            buf_emb = torch.zeros(1, bucket, self.emb_in.shape[-1], device=self.device, dtype=self.dtype)
            buf_pos = torch.arange(bucket, device=self.device)
            saved = [kv.clone() for kv in self.bb.kv]  # capture must not clobber cached context rows
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    self.bb.forward(buf_emb, buf_pos)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.bb.forward(buf_emb, buf_pos)
            for kv, old in zip(self.bb.kv, saved):
                kv.copy_(old)
            self._prefill_graphs[bucket] = (graph, buf_emb, buf_pos)
        return self._prefill_graphs[bucket]

    @_with_attention_kernels
    def warm_prefill(self, max_rows: int = 256) -> None:
        """Capture the prefill graphs up front (start-up, not the first utterance, pays for it)."""
        if self.cuda_graphs:
            for b in self.PREFILL_BUCKETS:
                if b <= min(max_rows, self.max_len):
                    self._prefill_graph(b)

    @torch.no_grad()
    def prepare(self, context: list[Segment], text: Segment) -> int:
        """Make the cache hold ``context`` (reusing the common prefix), prefill the text rows but its last; return
        the position of the text's last row (where generation starts)."""
        k = 0
        while k < min(len(context), len(self._cached)) and context[k] is self._cached[k]:
            k += 1
        start = sum(len(s) for s in context[:k])
        todo = [self.embed_segment(s) for s in context[k:]]
        text_emb = self.embed_segment(text)
        rows = torch.cat(todo + [text_emb[:, :-1]], dim=1)
        if start + rows.shape[1] + 1 > self.max_len:
            raise ValueError(
                f"context + text take {start + rows.shape[1] + 1} positions, over the model's {self.max_len}: "
                "trim the context first"
            )
        self._prefill_rows(rows, start)
        self._cached = list(context)
        self.stats["prefill_rows"] = float(rows.shape[1])
        self.stats["reused_rows"] = float(start)
        gen_pos = start + rows.shape[1]
        self.emb_in.copy_(text_emb[:, -1:])
        self.pos.fill_(gen_pos)
        return gen_pos

    @torch.no_grad()
    def commit(self, context: list[Segment], seg: Segment, rows_written: int) -> bool:
        """After generation: make ``seg`` (text + generated frames + EOS frame) a cached context segment; returns
        whether it now is (False: the cache moved on, or the window is full, and prepare() will prefill again)."""
        if self._cached != context:
            return False
        start = sum(len(s) for s in context)
        if start + len(seg) > self.max_len:
            return False
        emb = self.embed_segment(seg)
        self._prefill_rows(emb[:, rows_written:], start + rows_written)
        self._cached = list(context) + [seg]
        return True

    def invalidate(self) -> None:
        self._cached = []

    # ---- generation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, context: list[Segment], text: Segment, max_frames: int, cancel=None) -> Iterator[torch.Tensor]:
        """Yield frames (1, n_cb) on the device until the EOS frame (not yielded), ``max_frames`` or cancellation.

        With ``self.lookahead`` (default on CUDA) frame t+1 is launched before the host waits for frame t, so the
        GPU never idles on the per-frame EOS check (an async copy of 32 ints into pinned memory), and the caller's
        Mimi decode of frame t (on its own stream, after ``frame_ready``) overlaps the generation of t+1. A frame
        launched past the EOS frame is wasted work, not wrong output. On exit ``self.last_rows_written`` holds how
        many rows of the text+frames segment are in the cache.
        """
        gen_pos = self.prepare(context, text)
        n_text = len(text)
        max_frames = max(0, min(max_frames, self.max_len - gen_pos - 1))
        cuda = self.device.type == "cuda"
        replays = yielded = 0
        self.last_eos = False

        def stopped() -> bool:
            return cancel is not None and cancel.cancelled

        try:
            for t in range(max_frames):
                if replays == t:  # not launched ahead
                    if stopped():
                        break
                    self._run_frame()
                    replays += 1
                frame = self.frame_out.clone()
                copied = None
                if cuda:  # the decoder stream waits for this point, not for the frame launched after it
                    self.frame_ready = torch.cuda.Event()
                    self.frame_ready.record()
                    host = self._host_frame.copy_(frame, non_blocking=True)
                    copied = torch.cuda.Event()
                    copied.record()
                else:
                    host = frame
                if self.lookahead and t + 1 < max_frames and not stopped():
                    self._run_frame()
                    replays += 1
                if copied is not None:
                    copied.synchronize()  # frame t only; t+1 keeps the GPU busy meanwhile
                if bool((host[0, :-1] == self.eos_id).all()):
                    self.last_eos = True
                    break
                yielded += 1
                yield frame
        finally:
            # replay r wrote the row of the segment's row n_text - 1 + r: the text's last row, then frame r - 1.
            # Rows of frames past what was yielded (launched ahead) are not the segment's.
            self.last_rows_written = n_text - 1 + min(replays, yielded + 1)
        # a barrier can also give up later (another process or stream holding SMs): this utterance's audio is
        # garbage then, and the next one must not be. Once per utterance: the EOS check has synced, so the flag waits
        # at most for the frame launched ahead
        if self._barriers_checked and self._check_barriers():
            log.error("CSM: the utterance just generated came from a persistent kernel whose barrier gave up: its "
                      "audio is noise")
