"""The fused depth-decoder kernels (fern.tts.csm.kernels / fused) against eager references, int8/fp8 weights, and the
whole engine through them. On a CPU every kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set by conftest
before Triton is imported); with CUDA the same tests run the compiled kernels.

Tolerances: each kernel against a float64 reference computed from the same (dequantized) weights: max |err| /
max |ref| <= 1e-5 (fp32 accumulation; only the summation order differs). Tokens: exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import pytest
import torch
import torch.nn.functional as F
from conftest import make_synth, make_tiny_csm, make_tiny_mimi, torch_backbone_step

from fern.bench.opcount import count_kernels
from fern.tts.csm import fused
from fern.tts.csm import kernels as K
from fern.tts.csm.engine import CsmEngine, Segment

pytestmark = pytest.mark.models  # tiny random CSM/Mimi through Triton's interpreter: the full tier

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _interpreter(request):
    """Triton's interpreter mode is fixed when Triton is first imported. If something imported it before conftest
    could set TRITON_INTERPRET=1 (another test directory, in a whole-suite run), run this module in a fresh process
    instead, so these checks never silently vanish."""
    if not K.available():
        pytest.skip("triton is not installed")
    if DEV.type == "cuda" or K.interpreter_active():
        return
    if os.environ.get("FERN_KERNELS_SUBPROCESS"):
        pytest.fail("TRITON_INTERPRET=1 did not take effect even in a fresh process")
    env = dict(os.environ, TRITON_INTERPRET="1", FERN_KERNELS_SUBPROCESS="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(request.path)],
                       cwd=request.config.rootpath, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("kernel tests failed in a fresh process with TRITON_INTERPRET=1:\n" + r.stdout[-4000:])
    pytest.skip("passed in a fresh process with TRITON_INTERPRET=1 (Triton was imported before it could be set)")


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _seed(*case) -> int:
    """A different input draw per parametrised case, the same one on every run."""
    return zlib.crc32(repr(case).encode()) % 10_000


def _w(shape, kind, seed):
    """A random weight as the kernels take it, and its dequantized float64 value for the reference."""
    w = torch.randn(*shape, generator=_g(seed)) / shape[1] ** 0.5
    lw = fused._W(w, kind)
    return lw.w.to(DEV), (None if lw.scale is None else lw.scale.to(DEV)), fused.dequantize(lw.w, lw.scale).double()


def _rel(out, ref) -> float:
    out = out.detach().double().cpu()
    assert torch.isfinite(out).all(), "unwritten (NaN-poisoned) or non-finite output"
    return float((out - ref).abs().max() / ref.abs().max())


def _rms(h, nw, eps=1e-5):
    return h * torch.rsqrt(h.pow(2).mean() + eps) * nw


D, NH, NKV, HD, L, FF, V = 48, 4, 2, 12, 32, 96, 2051
# one program per kernel (the interpreter default), and GPU-like small blocks that split rows and K over programs
BLOCKS = {"one_program": dict(BP=128, BK=64, BN=128), "many_programs": dict(BP=4, BK=16, BN=16)}


@pytest.mark.parametrize("blocks", list(BLOCKS))
@pytest.mark.parametrize("kind", fused.WEIGHT_KINDS)
@pytest.mark.parametrize("rope", [False, True])
def test_norm_qkv_rope_cache_write(blocks, kind, rope):
    b = BLOCKS[blocks]
    seed = _seed(blocks, kind, rope)
    h = torch.randn(D, generator=_g(seed))
    nw = torch.rand(D, generator=_g(seed + 1)) + 0.5
    w, s, wref = _w(((NH + 2 * NKV) * HD, D), kind, seed + 2)
    cos, sin = torch.randn(L, HD, generator=_g(seed + 3)), torch.randn(L, HD, generator=_g(seed + 4))
    buf = torch.full((NH + 2 * NKV, L, HD), float("nan"), device=DEV)
    pos = 7
    K.launch("_norm_qkv_cache", (-(-(NH + 2 * NKV) * HD // 2 // b["BP"]),), h.to(DEV), nw.to(DEV), 1e-5, w,
             w if s is None else s, buf, buf[NH:], torch.tensor([pos], device=DEV), cos.to(DEV), sin.to(DEV), D=D,
             NH=NH, NKV=NKV, HD=HD, QL=L, L=L, BP=b["BP"], BK=b["BK"], ROPE=rope, HAS_SCALE=s is not None)
    y = (wref @ _rms(h.double(), nw.double())).view(NH + 2 * NKV, HD)
    if rope:  # transformers' rotate_half rope on the q and k heads only
        rot = torch.cat([-y[:, HD // 2:], y[:, : HD // 2]], 1)
        y = torch.cat([(y * cos[pos].double() + rot * sin[pos].double())[: NH + NKV], y[NH + NKV:]])
    assert _rel(buf[:, pos], y) <= TOL
    assert torch.isnan(buf[:, :pos]).all() and torch.isnan(buf[:, pos + 1:]).all()  # one row written, no other


@pytest.mark.parametrize("blocks", list(BLOCKS))
@pytest.mark.parametrize("kind", fused.WEIGHT_KINDS)
def test_attention_o_proj_residual(blocks, kind):
    b = BLOCKS[blocks]
    seed = _seed(blocks, kind)
    buf = torch.randn(NH + 2 * NKV, L, HD, generator=_g(seed))
    w, s, wref = _w((D, NH * HD), kind, seed + 1)
    h = torch.randn(D, generator=_g(seed + 2))
    pos = 9  # rows past it hold stale values that must be masked
    out = h.to(DEV).clone()
    K.launch("_attn_o_residual", (-(-D // b["BN"]),), buf.to(DEV), torch.tensor([pos], device=DEV), w,
             w if s is None else s, out, 0.3, D=D, NH=NH, NKV=NKV, HD=HD, L=L, BL=32, BHD=16, BN=b["BN"],
             HAS_SCALE=s is not None)
    q = buf[:NH, pos].double()[None, :, None]
    k = buf[NH:NH + NKV, : pos + 1].double().repeat_interleave(NH // NKV, 0)[None]
    v = buf[NH + NKV:, : pos + 1].double().repeat_interleave(NH // NKV, 0)[None]
    o = F.scaled_dot_product_attention(q, k, v, scale=0.3).reshape(-1)
    assert _rel(out, h.double() + wref @ o) <= TOL


@pytest.mark.parametrize("blocks", list(BLOCKS))
@pytest.mark.parametrize("kind", fused.WEIGHT_KINDS)
def test_gate_up_swiglu_and_down_residual(blocks, kind):
    b = BLOCKS[blocks]
    seed = _seed(blocks, kind, "mlp")
    h = torch.randn(D, generator=_g(seed))
    nw = torch.rand(D, generator=_g(seed + 1)) + 0.5
    wgu, sgu, gu_ref = _w((2 * FF, D), kind, seed + 2)
    wd, sd, d_ref = _w((D, FF), kind, seed + 3)
    act = torch.full((FF,), float("nan"), device=DEV)
    K.launch("_norm_gateup_swiglu", (-(-FF // b["BN"]),), h.to(DEV), nw.to(DEV), 1e-5, wgu, wgu if sgu is None else sgu,
             act, D=D, FF=FF, BN=b["BN"], BK=b["BK"], HAS_SCALE=sgu is not None)
    g, u = (gu_ref @ _rms(h.double(), nw.double())).chunk(2)
    act_ref = F.silu(g) * u
    assert _rel(act, act_ref) <= TOL
    out = h.to(DEV).clone()
    K.launch("_down_residual", (-(-D // b["BN"]),), act, wd, wd if sd is None else sd, out, D=D, FF=FF, BN=b["BN"],
             BK=b["BK"], HAS_SCALE=sd is not None)
    assert _rel(out, h.double() + d_ref @ act.double().cpu()) <= TOL


@pytest.mark.parametrize("blocks", ["one_program", "many_programs"])
@pytest.mark.parametrize("kind", fused.WEIGHT_KINDS)
@pytest.mark.parametrize("mode", ["greedy", "top_k", "forced"])
def test_head_norm_logits_and_sampling(blocks, kind, mode):
    """Logits, the token the last program picks (== the torch sampler on the same noise), the next input row it
    writes, and the counter it leaves at zero for the next launch."""
    bn = 128 if blocks == "many_programs" else 4096
    seed = _seed(blocks, kind, mode)
    h = torch.randn(D, generator=_g(seed))
    nw = torch.rand(D, generator=_g(seed + 1)) + 0.5
    w, s, wref = _w((V, D), kind, seed + 2)  # (vocab, hidden) as quantized heads are stored
    if s is None:  # unquantized heads are the model's (hidden, vocab): read through strides
        w = w.t().contiguous()
        swk, swn = w.stride(0), w.stride(1)
    else:
        swk, swn = w.stride(1), w.stride(0)
    table = torch.randn(V, D, generator=_g(seed + 3))
    noise = torch.randn(V, generator=_g(seed + 4)) * 2 if mode == "top_k" else None
    force = torch.tensor([17], device=DEV)
    logits = torch.full((V,), float("nan"), device=DEV)
    counter = torch.zeros(1, device=DEV, dtype=torch.int32)
    code = torch.full((1,), -1, device=DEV, dtype=torch.long)
    out_h = h.to(DEV).clone()
    K.launch("_norm_head_sample", (-(-V // bn),), out_h, nw.to(DEV), 1e-5, w, swk, swn, w if s is None else s, logits,
             counter, logits if noise is None else noise.to(DEV), 50, code, table.to(DEV), force, D=D, V=V, VP=4096,
             BN=bn, BK=64, HAS_SCALE=s is not None, SAMPLE=noise is not None, WRITE_NEXT=True,
             FORCE=mode == "forced")
    ref = wref @ _rms(h.double(), nw.double())
    assert _rel(logits, ref) <= TOL
    expect = fused.sample_fused(logits.cpu(), noise, 50)  # the same decision on the kernel's own logits
    assert int(code) == int(expect)
    if mode == "top_k":
        assert int(code) in torch.topk(ref, 50).indices.tolist()
    else:
        assert int(code) == int(ref.argmax())
    nxt = 17 if mode == "forced" else int(code)
    assert torch.equal(out_h.cpu(), table[nxt])
    assert int(counter) == 0


def test_fused_sampler_draws_from_the_top_k_softmax():
    """One noise value per vocabulary entry over the top-k set samples softmax(top-k logits / T), like the engine's
    per-rank noise: 40 000 vectorised draws, frequencies within 4 standard errors, nothing outside the top k."""
    g = _g(3)
    logits = torch.randn(64, generator=g) * 2
    T, k, n = 0.7, 5, 40_000
    noise = -T * torch.empty(n, 64).exponential_(1, generator=g).log()
    draws = fused.sample_fused(logits.expand(n, 64), noise, k)
    top = torch.topk(logits, k)
    p = torch.softmax(top.values / T, 0)
    freq = torch.stack([(draws == i).float().mean() for i in top.indices])
    assert float(freq.sum()) == 1.0
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_csm(seed=1, device=str(DEV))


# the persistent kernel in the interpreter runs one program, which walks every block of every phase: small blocks
# make it walk several (the partition of rows and K), each phase's last one partial (48, 96 and 2051 wide against
# 32, 64 and 512), the default ones one block per phase
FRAME_SMALL_BLOCKS = dict(BP=8, BKA=32, BNO=32, BNG=32, BKG=32, BND=16, BKD=64, BNH=512, BKH=32)


@pytest.mark.parametrize(("kind", "mode", "dmode"), [
    ("bf16", "greedy", "steps"), ("bf16", "forced", "steps"), ("int8", "top_k", "steps"), ("fp8", "top_k", "steps"),
    ("bf16", "greedy", "frame"), ("bf16", "forced", "frame"), ("int8", "top_k", "frame"), ("fp8", "top_k", "frame"),
    ("bf16", "top_k", "frame_small_blocks")])
def test_fused_depth_triton_equals_its_torch_reference(tiny, kind, mode, dmode):
    """A whole frame's depth decoder (31 codebooks, sampling, next-input rows) through the kernels gives the torch
    reference's tokens: greedy, with sampling noise, and with teacher forcing; as step kernels and as the one
    persistent kernel (mode frame)."""
    engine = CsmEngine(tiny)
    blocks = FRAME_SMALL_BLOCKS if dmode == "frame_small_blocks" else None
    dmode = dmode.removesuffix("_small_blocks")
    tri = fused.FusedDepth(engine, "triton", kind, blocks=blocks, mode=dmode)
    ref = fused.FusedDepth(engine, "torch", kind, mode=dmode)
    x = torch.randn(1, 2, tri.D, generator=_g(5)).to(DEV)
    c0 = torch.tensor([3], device=DEV)
    noise = -0.9 * torch.empty(tri.n_cb - 1, tri.V).exponential_(1, generator=_g(6)).log().to(DEV)
    force = torch.randint(0, tri.V, (tri.n_cb,), generator=_g(7)).to(DEV)
    args = {"greedy": (None, 0, None), "top_k": (noise, 50, None), "forced": (None, 0, force)}[mode]
    a = tri.run(x, c0, *args).clone()
    b = ref.run(x, c0, *args).clone()
    assert torch.equal(a, b)
    assert (tri.h - ref.h).abs().max() <= TOL * ref.h.abs().max()
    if dmode == "frame":  # every layer's q|k|v rows (rope applied in the kernel) and the counters reset to 0
        for i, buf in enumerate(ref.buf):
            assert (tri.buf_all[i] - buf).abs().max() <= TOL * buf.abs().max(), i
        # and the kernel passed one barrier after each phase of each step (its own count, left in sync[3])
        assert tri.sync.tolist() == [0, 0, 0, tri.barriers_per_frame()]
        assert tri.barriers_per_frame() == tri.L * (4 * len(tri.o) + 1)
        assert not tri.barrier_timed_out()
    if mode == "forced":  # the inputs were the forced tokens: the last step's input row is codebook 30's forced one
        assert not torch.equal(a[0, 1:-1], force[1:-1])


def test_frame_mode_reference_is_the_steps_math(tiny):
    """The persistent kernel's reference (per-layer weights, rope on the projected rows) and the step kernels'
    (rope folded into per-position weights) are the same model: the same greedy tokens, the same final state."""
    engine = CsmEngine(tiny)
    frame = fused.FusedDepth(engine, "torch", "bf16", mode="frame")
    steps = fused.FusedDepth(engine, "torch", "bf16", mode="steps")
    x = torch.randn(1, 2, frame.D, generator=_g(9)).to(DEV)
    c0 = torch.tensor([11], device=DEV)
    assert torch.equal(frame.run(x, c0, None, 0).clone(), steps.run(x, c0, None, 0).clone())
    assert (frame.h - steps.h).abs().max() <= TOL * steps.h.abs().max()
    assert frame.weight_bytes_per_frame() == steps.weight_bytes_per_frame()


def test_bad_fused_mode_is_refused(tiny):
    with pytest.raises(ValueError, match="mode must be one of"):
        fused.FusedDepth(CsmEngine(tiny), "triton", "bf16", mode="megakernel")


def _frames(engine, n, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    seg = Segment(torch.tensor([1, 40, 41, 42, 43, 9]))
    return torch.cat(list(engine.generate([], seg, n)))


@pytest.mark.parametrize("kernels", ["triton", "persistent"])
def test_engine_triton_greedy_tokens_identical_to_torch_path(tiny, kernels):
    """Greedy through the whole engine (backbone torch, depth decoder Triton) == the torch fast path, which the
    other tests tie to transformers' generate."""
    ref = _frames(CsmEngine(tiny), 2)
    engine = CsmEngine(tiny, kernels=kernels)
    assert engine.kernels == kernels
    assert torch.equal(_frames(engine, 2), ref)
    # the persistent kernel applies rope itself: the engine keeps no per-position rope-folded weights for it
    assert all(row[4] is None for row in engine._dd_rows) == (kernels == "persistent")


# the backbone's kernels with small blocks: q|k|v pairs, gate|up and down rows and K split over programs, and the
# attention over several chunks of 4 positions, merged by the combine
BACKBONE_SMALL_BLOCKS = dict(qkv_bp=4, qkv_bk=16, attn_bt=4, o_bn=16, gu_bn=16, gu_bk=16, down_bn=16, down_bk=32)


@pytest.mark.parametrize("mode", ["layers", "frame"])
@pytest.mark.parametrize("blocks", ["default", "small"])
@torch.no_grad()
def test_fused_backbone_step_equals_the_torch_step(blocks, mode):
    """One backbone row after a 23-row prompt: the Triton step (5 launches per layer, or the persistent kernel,
    whose one interpreted program loops over every block of every phase) gives the torch fast path's hidden state
    and writes the same K/V into the shared cache (the prompt was prefilled by torch)."""
    from fern.tts.csm.fused_backbone import FusedBackbone

    engine = CsmEngine(make_tiny_csm(seed=2, max_positions=64, device=str(DEV)))
    pos = engine.prepare([], Segment(torch.arange(3, 27)))
    assert pos == 23
    emb, at, ref, ref_kv, before = torch_backbone_step(engine)
    fb = FusedBackbone(engine, blocks=BACKBONE_SMALL_BLOCKS if blocks == "small" else None, mode=mode)
    assert fb.chunks == (16 if blocks == "small" else 1)
    if mode == "frame":  # the layers' tensors found by offsets from one base per kind, all 16-byte aligned
        assert fb.offsets.shape == (len(engine.bb.layers), 5) and fb.align == 4 and fb.grid == 1
    out = fb.run(emb, at)
    assert out.shape == ref.shape and _rel(out, ref.double().cpu()) <= TOL
    for i, kv in enumerate(engine.bb.kv):
        assert _rel(kv[:, :, :, pos], ref_kv[i].double().cpu()) <= TOL, i
        assert torch.equal(kv[:, :, :, :pos], before[i][:, :, :, :pos])  # the prompt's rows are left alone
        assert not kv[:, :, :, pos + 1:].any()
    if mode == "frame":  # the counters reset for the next launch (and graph replay), the barriers the kernel passed
        assert fb.sync.tolist() == [0, 0, 0, 5 * len(engine.bb.layers)] and not fb.barrier_timed_out()
        assert fb.barriers_per_frame() == 5 * len(engine.bb.layers)


# the step backbone beside the torch depth decoder, the persistent one beside the persistent depth decoder (the two
# share no buffers: the mixed pairing adds 17 s of interpreter time and no path)
@pytest.mark.parametrize(("kernels", "backbone"), [("torch", "triton"), ("persistent", "persistent")])
def test_engine_with_triton_backbone_gives_the_torch_paths_greedy_tokens(kernels, backbone):
    """Whole frames with the backbone's Triton step or persistent kernel (and the depth decoder on torch or the
    persistent kernel) == the torch fast path, over frames whose positions fall in two attention chunks."""
    model = make_tiny_csm(seed=1, max_positions=64, device=str(DEV))
    ref = _frames(CsmEngine(model), 3)
    from fern.tts.csm.fused_backbone import FusedBackbone

    engine = CsmEngine(model, kernels=kernels, backbone_kernels=backbone)
    assert (engine.backbone_kernels, engine.kernels) == (backbone, kernels)
    assert engine.bb_fused.mode == ("frame" if backbone == "persistent" else "layers")
    # positions 6.. span chunks 1 and 2
    engine.bb_fused = FusedBackbone(engine, blocks=BACKBONE_SMALL_BLOCKS, mode=engine.bb_fused.mode)
    assert torch.equal(_frames(engine, 3), ref)


def test_unknown_backbone_kernels_is_refused(tiny):
    from fern.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match="tts.backbone_kernels must be one of"):
        CsmEngine(tiny, backbone_kernels="cuda")


@pytest.mark.parametrize("kind", ["int8"])
def test_engine_quantized_sampling_triton_equals_torch_emulation(tiny, kind):
    """With sampling, the same seed draws the same noise on both backends, so tokens must be identical."""
    tri = CsmEngine(tiny, kernels="triton", weights=kind)
    emu = CsmEngine(tiny, kernels="torch", weights=kind)
    assert (tri.kernels, emu.kernels, tri.weights) == ("triton", "torch", kind)
    for e in (tri, emu):
        e.temperature, e.top_k = 0.9, 50
    assert torch.equal(_frames(tri, 1, seed=11), _frames(emu, 1, seed=11))


def test_quantize_per_channel_error_bounds():
    w = torch.randn(64, 96, generator=_g(8)) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different scales
    q8, s8 = fused.quantize(w, "int8")
    assert q8.dtype == torch.int8 and s8.shape == (64,)
    assert (q8.abs().amax(1) == 127).all()  # each row uses its full range
    assert ((fused.dequantize(q8, s8) - w).abs() <= s8[:, None] / 2 + 1e-7).all()
    qf, sf = fused.quantize(w, "fp8")
    assert qf.dtype == torch.float8_e4m3fn
    err = (fused.dequantize(qf, sf) - w).abs()
    # e4m3: 3 mantissa bits -> relative rounding error <= 2^-4 for normal values; absolute below the normals
    assert (err <= torch.maximum(w.abs() / 16, sf[:, None] * 2.0**-9)).all()


def test_launches_per_frame(tiny):
    """4 Triton kernels per layer and position, 1 per codebook head; together with the torch backbone well under
    half of the torch path's kernels per frame. The persistent kernel: one launch for the whole depth decoder."""
    seg = Segment(torch.tensor([1, 5, 6]))
    counts = {}
    for kern in ("torch", "triton", "persistent"):
        engine = CsmEngine(tiny, kernels=kern)
        engine.temperature, engine.top_k = 0.9, 50
        engine.prepare([], seg)
        with torch.no_grad():
            counts[kern] = count_kernels(engine._frame)
    tri = counts["triton"]
    n_layers, n_cb = len(tiny.depth_decoder.model.layers), tiny.config.num_codebooks
    launches = {k: v for k, v in tri.items() if k.startswith("triton:")}
    assert launches == {"triton:norm_qkv_cache": n_layers * n_cb, "triton:attn_o_residual": n_layers * n_cb,
                        "triton:norm_gateup_swiglu": n_layers * n_cb, "triton:down_residual": n_layers * n_cb,
                        "triton:norm_head_sample": n_cb - 1}
    assert sum(tri.values()) <= 0.5 * sum(counts["torch"].values()), (sum(tri.values()), sum(counts["torch"].values()))
    per = counts["persistent"]
    assert {k: v for k, v in per.items() if k.startswith("triton:")} == {"triton:depth_frame": 1}
    # the rest is the backbone and codebook 0, the step-kernel path's torch operators but its two copies of the
    # input rows into h (the persistent kernel reads them where they are)
    assert sum(per.values()) - 1 == sum(tri.values()) - sum(launches.values()) - 2
    # and the backbone's step as 5 Triton launches per layer
    engine = CsmEngine(tiny, kernels="persistent", backbone_kernels="triton")
    engine.temperature, engine.top_k = 0.9, 50
    engine.prepare([], seg)
    with torch.no_grad():
        both = count_kernels(engine._frame)
    n_bb = len(tiny.backbone_model.layers)
    assert {k: v for k, v in both.items() if k.startswith("triton:")} == {
        "triton:depth_frame": 1, "triton:norm_qkv_cache": n_bb, "triton:attn_split": n_bb,
        "triton:attn_combine_o_residual": n_bb, "triton:norm_gateup_swiglu": n_bb, "triton:down_residual": n_bb}
    assert sum(both.values()) < sum(per.values()) - 5 * n_bb  # 13 torch operators per layer gone, 5 launches in
    # and as one persistent launch: the 5 per layer become one, and the copy of the input row into h a phase of it
    engine = CsmEngine(tiny, kernels="persistent", backbone_kernels="persistent")
    engine.temperature, engine.top_k = 0.9, 50
    engine.prepare([], seg)
    with torch.no_grad():
        one = count_kernels(engine._frame)
    assert {k: v for k, v in one.items() if k.startswith("triton:")} == {"triton:depth_frame": 1,
                                                                         "triton:backbone_frame": 1}
    launches_and_copy_gone, launch_in = 5 * n_bb + 1, 1
    assert sum(one.values()) == sum(both.values()) - launches_and_copy_gone + launch_in


def test_unusable_triton_falls_back_to_torch_and_says_why(tiny, monkeypatch, caplog):
    monkeypatch.setattr(K, "usable_on", lambda device: "no compiler here")
    with caplog.at_level("WARNING", logger="fern.tts.csm.engine"):
        engine = CsmEngine(tiny, kernels="triton")
    assert engine.kernels == "torch" and engine.depth is None
    assert "no compiler here" in caplog.text
    with caplog.at_level("INFO", logger="fern.tts.csm.engine"):
        engine = CsmEngine(tiny, kernels="triton", weights="int8")  # quantized weights still apply, via torch
    assert (engine.kernels, engine.weights, engine.depth.backend) == ("torch", "int8", "torch")
    caplog.clear()
    with caplog.at_level("WARNING", logger="fern.tts.csm.engine"):
        engine = CsmEngine(tiny, backbone_kernels="triton")
    assert engine.backbone_kernels == "torch" and engine.bb_fused is None
    assert "CSM backbone: Triton kernels unusable" in caplog.text and "no compiler here" in caplog.text


def test_bad_kernel_or_weight_names_are_config_errors(tiny):
    from fern.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match="tts.kernels"):
        CsmEngine(tiny, kernels="cuda")
    with pytest.raises(ConfigValueError, match="tts.kernels"):
        CsmEngine(tiny, kernels="megakernel")
    with pytest.raises(ConfigValueError, match="optim.tts_weights"):
        CsmEngine(tiny, weights="int4")


def test_config_switches_reach_the_synthesizer(compose, tiny):
    cfg = compose(["tts=csm_streaming", "optim.tts_weights=int8", "tts.kernels=triton", "tts.backbone_kernels=triton"])
    assert cfg.optim.tts_weights == "int8"
    assert (cfg.tts.kernels, cfg.tts.weights, cfg.tts.backbone_kernels) == ("triton", "int8", "triton")
    assert compose(["tts=csm"]).tts.weights == "bf16"
    assert compose(["tts=csm"]).tts.backbone_kernels == "torch"
    assert compose(["tts=csm", "tts.backbone_kernels=persistent"]).tts.backbone_kernels == "persistent"
    synth = make_synth(tiny, mimi=make_tiny_mimi(device=str(DEV)), device=str(DEV), kernels=cfg.tts.kernels,
                       weights=cfg.tts.weights, backbone_kernels=cfg.tts.backbone_kernels)
    assert (synth.engine.kernels, synth.engine.weights, synth.engine.backbone_kernels) == ("triton", "int8", "triton")


def test_quantized_token_agreement_on_random_weights(tiny):
    """Teacher-forced agreement with the reference loop (fern.bench.csm_quant): the unquantized fused math gives the
    reference's tokens; int8 and fp8 per-channel weights keep most of them (random weights: a check that the scales
    are applied per the right axis, not a quality claim; a wrong axis or scale drops agreement to ~1/2051)."""
    from fern.bench.csm_quant import agreement

    res = agreement(tiny, tiny, 4, ["bf16", "int8", "fp8"], "torch", list(range(1, 13)))
    assert res["codebooks_compared"] == 4 * 31
    assert res["bf16"] == 1.0
    assert res["int8"] >= 0.9 and res["fp8"] >= 0.7, res


def test_weight_bytes_per_frame_rules_agree(tiny):
    """The bandwidth share's numerator: the shape-only count (used for CSM-1B without building it) equals what the
    engines report, per path; int8 / fp8 read about a quarter of the fp32 tiny model's depth-decoder bytes."""
    from fern.bench.opcount import csm_weight_bytes_per_frame
    from fern.bench.tts import frame_weight_bytes

    rule = csm_weight_bytes_per_frame(tiny)
    assert rule["torch"] == frame_weight_bytes(CsmEngine(tiny))
    for kind in fused.WEIGHT_KINDS:
        for kernels in ("triton", "persistent"):
            engine = CsmEngine(tiny, kernels=kernels, weights=kind)
            assert rule[f"fused_{kind}"] == frame_weight_bytes(engine), (kind, kernels)
    assert rule["fused_int8"] == rule["fused_fp8"] < rule["fused_bf16"]


def test_device_recipe_variants_name_known_kernels_and_shapes():
    """Every variant recipes/gpu_bench.sh hands fern.bench.tts on the device names known kernels, weights and launch
    shapes (a typo would cost its figures in a scarce device session; here it fails the tests), and the checker
    refuses what the engine would: unknown keys, keys without an integer, shapes for kernels that take none."""
    import re

    from fern.bench.tts import parse_variant
    from fern.paths import PROJECT_ROOT

    script = (PROJECT_ROOT / "recipes" / "gpu_bench.sh").read_text()
    lists = re.findall(r"\bP?VARIANTS\+?=\"([^\"]+)\"", script) + re.findall(r"\bP?VARIANTS=([\w:,]+);", script)
    variants = [v.lstrip(",") for part in lists for v in part.split(",") if v.lstrip(",")]
    assert "persistent:bf16:persistent@PREFETCH=1;bb.prefetch=1" in variants and len(variants) >= 8, variants
    for variant in variants:
        parse_variant(variant)
    assert parse_variant("persistent:int8:persistent@BNG=32;bb.prefetch=1") == (
        "persistent", "int8", "persistent", {"BNG": 32}, {"prefetch": 1})
    # auto runs the persistent kernels where it runs Triton at all: their launch shapes
    assert parse_variant("auto:bf16:auto@SD=3;bb.gu_stages=2")[3:] == ({"SD": 3}, {"gu_stages": 2})
    for bad, why in (("persistent:bf16@BNGG=32", r"unknown launch shape\(s\) \['BNGG'\]"),
                     ("persistent:bf16@BNG", "not block=integer"), ("persistent:bf16@BNG=x", "not block=integer"),
                     ("persistent:bf16:persistent@bb.PREFETCH=1", r"unknown launch shape\(s\) \['PREFETCH'\]"),
                     ("triton:bf16@PREFETCH=1", r"unknown launch shape\(s\) \['PREFETCH'\]"),
                     ("persistent:bf16@bb.prefetch=1", "need a triton or persistent backbone"),
                     ("persistent:bf16@PREFETCH=2", "prefetch must be 0 or 1, got 2"),
                     ("persistent:bf16@TIMING=2", "timing must be 0 or 1, got 2"),
                     ("persistent:bf16@SD=0", r"pipeline stages must be integers >= 1 \(1: none\), got \{'SD': 0\}"),
                     ("persistent:bf16:persistent@bb.down_stages=-1", "pipeline stages must be integers >= 1"),
                     ("torch:bf16@BNG=32", "need triton, persistent or auto kernels"),
                     ("persistent:bf8", "weights must be one of"), ("persistant:bf16", "kernels must be one of"),
                     ("persistent:bf16:cuda", "backbone kernels must be one of")):
        with pytest.raises(ValueError, match=why):
            parse_variant(bad)


def test_bench_variant_with_launch_shapes_logs_to_mlflow(tmp_path, monkeypatch):
    """fern.bench.tts on the tiny config: a persistent-kernel variant with its own launch shapes (the tuning syntax
    gpu_bench uses on the device) runs its frame loop, applies the shapes, and its figures reach a real SQLite
    MLflow store under metric names MLflow accepts (no ':', '@', '=' or ';')."""
    import mlflow

    from fern.bench import tts as bench_tts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    variant = "persistent:int8@BNG=32;BND=8"
    res = bench_tts.main(["--size", "tiny", "--device", str(DEV), "--frames", "1", "--runs", "1",
                          "--baseline-frames", "0", "--no-compare-modules", "--variants", variant,
                          "--phase-times", "persistent:bf16:persistent"])
    # the phase timing reads PTX clocks: on the CPU it is reported as refused, and the other figures stand
    assert "interpreter on the CPU cannot run" in res["phase_times"]["error"]
    v = res[f"variant_{variant}"]
    assert "error" not in v, v
    assert (v["kernels"], v["weights"], v["blocks"]) == ("persistent", "int8", "BNG=32;BND=8")
    assert v["triton_launches_per_frame"] == 1 and v["gen_ms_per_frame"] > 0
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["fern-bench-tts"], output_format="list")[0]
    assert run.data.metrics["variant_persistent_int8_BNG_32_BND_8.gen_ms_per_frame"] == v["gen_ms_per_frame"]
    # the backbone's part of a frame, timed alone: what fusing it could save
    assert 0 < res["backbone_ms_per_frame"] < res["gen_ms_per_frame"]
    assert run.data.metrics["backbone_share"] == res["backbone_share"]
    bad = bench_tts._variant(None, None, "persistent:bf16@BNG", None, None, res)
    assert "error" in bad  # a shape without a value is reported, not raised


def test_phase_times_print_and_reach_mlflow(tmp_path, monkeypatch, capsys):
    """fern.bench.tts's phase table (as a GPU run would fill it) prints one line per phase kind and reaches a real
    SQLite MLflow store as phase_times.<part>.<kind>.<figure> metrics."""
    import argparse

    import mlflow

    from fern.bench import tts as bench_tts
    from fern.tts.csm.kernels import phase_breakdown

    depth = phase_breakdown([0, 0, 10, 14, 30, 31, 1200, 60], ["q|k|v", "attention + o"])
    res = {"phase_times": {"variant": "persistent:bf16:persistent", "depth": depth}, "gen_ms_per_frame": 4.0}
    bench_tts._print_phase_times(res["phase_times"])
    out = capsys.readouterr().out
    assert "depth: 0.001 ms per launch" in out and "q|k|v" in out and "attention + o" in out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = argparse.Namespace(size="full", device="cuda", kernels="persistent", weights="bf16",
                              backbone_kernels="persistent", cuda_graphs=True, compile=False, variants="")
    bench_tts._log_mlflow(res, args)
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["fern-bench-tts"], output_format="list")[0]
    assert run.data.metrics["phase_times.depth.q_k_v.work_us"] == pytest.approx(depth["phases"]["q|k|v"]["work_us"])
    assert run.data.metrics["phase_times.depth.launch_ms"] == pytest.approx(depth["launch_ms"])


@pytest.mark.parametrize("depth_key,backbone_key,why", [("PREFETCH", "prefetch", "issues PTX prefetches"),
                                                        ("TIMING", "timing", "reads the GPU's clocks in PTX")])
def test_ptx_only_switches_are_refused_where_the_interpreter_runs_the_kernels(tiny, depth_key, backbone_key, why):
    """The persistent kernels' L2 prefetch and phase timing are PTX instructions: on the CPU (Triton's interpreter
    runs no PTX) asking for them is an error that says so, not a silent no-op; values other than 0 / 1 are refused
    anywhere. Off (the default until a GPU measures them), both kernels still run (the tests above run them so)."""
    from fern.tts.csm.fused_backbone import FusedBackbone

    engine = CsmEngine(tiny)
    with pytest.raises(ValueError, match=f"{backbone_key}=1 {why}, which Triton's interpreter on the CPU cannot run"):
        fused.FusedDepth(engine, "triton", "bf16", blocks={depth_key: 1}, mode="frame")
    with pytest.raises(ValueError, match="interpreter on the CPU cannot run"):
        FusedBackbone(engine, blocks={backbone_key: 1}, mode="frame")
    with pytest.raises(ValueError, match=f"{backbone_key} must be 0 or 1, got 2"):
        FusedBackbone(engine, blocks={backbone_key: 2}, mode="frame")
    depth = fused.FusedDepth(engine, "triton", "bf16", blocks={depth_key: 0}, mode="frame")
    assert depth.blocks[depth_key] == 0 and fused.FRAME_GPU_BLOCKS[depth_key] == 0
    with pytest.raises(ValueError, match="TIMING=1"):  # stamps without a timed launch: an error, not zeros
        depth.phase_times()


def test_phase_breakdown_from_stamps():
    """Program 0's stamps -> per phase kind: mean work and barrier wait (cycles into time by the launch's own ratio of
    timer ns to cycles), how many per launch, and ms per launch that add up to the launch."""
    from fern.tts.csm.kernels import phase_breakdown

    # start: 1000 ns / cycle 0; barriers 1-3 (kinds a, b, a) before / after at cycles 10/14, 30/31, 40/50; the tail
    # (kind c) to the end: 1120 ns / cycle 60 -> 2 ns per cycle
    times = [1000, 0, 10, 14, 30, 31, 40, 50, 1120, 60]
    got = phase_breakdown(times, ["a", "b", "a"], tail="c")
    assert got["launch_ms"] == pytest.approx(120e-6) and got["ns_per_cycle"] == pytest.approx(2.0)
    a, b, c = (got["phases"][k] for k in "abc")
    assert a["per_launch"] == 2 and a["work_us"] == pytest.approx((10 + 9) / 2 * 2e-3)
    assert a["wait_us"] == pytest.approx((4 + 10) / 2 * 2e-3)
    assert (b["work_us"], b["wait_us"]) == (pytest.approx(16 * 2e-3), pytest.approx(1 * 2e-3))
    assert (c["per_launch"], c["work_us"], c["wait_us"]) == (1, pytest.approx(10 * 2e-3), 0.0)
    assert sum(r["ms_per_launch"] for r in got["phases"].values()) == pytest.approx(got["launch_ms"])
    # without the tail, the phases miss the 10 cycles after the last barrier
    bare = phase_breakdown(times, ["a", "b", "a"])
    assert sum(r["ms_per_launch"] for r in bare["phases"].values()) == pytest.approx(got["launch_ms"] - 20e-6)
    with pytest.raises(ValueError, match="no timed launch"):
        phase_breakdown([0] * 10, ["a", "b", "a"], tail="c")
    with pytest.raises(ValueError, match="9 stamps for 3 barriers: need 10"):
        phase_breakdown(times[:9], ["a", "b", "a"])


def test_mistyped_launch_shapes_are_refused_not_ignored(tiny):
    """A tuning key that names no launch shape would leave the default in place and the figure would be credited
    to a shape that never ran: the depth decoder's and the backbone's kernels refuse it, naming the known keys; a
    bench variant routes ``bb.`` keys to the backbone and reports the refusal as the variant's error."""
    from fern.bench import tts as bench_tts
    from fern.tts.csm.fused_backbone import FusedBackbone

    engine = CsmEngine(tiny)
    with pytest.raises(ValueError, match=r"unknown launch shape\(s\) \['BNGG'\].*known are \['BKA'"):
        fused.FusedDepth(engine, "triton", "bf16", blocks={"BNGG": 32}, mode="frame")
    with pytest.raises(ValueError, match=r"unknown launch shape\(s\) \['BNG'\] for the backbone"):
        FusedBackbone(engine, blocks={"BNG": 32}, mode="frame")  # a depth key, given to the backbone
    assert FusedBackbone(engine, blocks={"gu_bn": 16}, mode="frame").blocks["gu_bn"] == 16
    from fern.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match=r"backbone launch shapes \['gu_bn'\] need tts.backbone_kernels"):
        CsmEngine(tiny, backbone_blocks={"gu_bn": 16})  # the torch backbone has no launch shapes to take them

    class Args:
        cuda_graphs, device = False, str(DEV)

    engine.temperature, engine.top_k = 0.0, 0
    seg = Segment(torch.tensor([1, 5, 6]))
    bad = bench_tts._variant(tiny, seg, "torch:bf16:persistent@bb.gu_bnn=16", engine, Args, {})
    assert "unknown launch shape(s) ['gu_bnn'] for the backbone" in bad["error"], bad


def test_bench_keeps_the_variants_that_ended_when_cut_short(tmp_path, monkeypatch):
    """gpu_bench runs fern.bench.tts in a time box: each variant's figures reach the JSON as it ends, so a box that
    kills the run keeps them (the summary marks the file partial). The first variant, the persistent backbone (the
    depth decoder on torch, for time), runs for real; the second is cut off the way the time box would (the process
    stops inside it)."""
    from fern.bench import tts as bench_tts

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real = bench_tts._variant
    calls = []

    def cut_after_first(*args):
        calls.append(args[2])
        if len(calls) > 1:
            raise SystemExit("time box")
        return real(*args)

    monkeypatch.setattr(bench_tts, "_variant", cut_after_first)
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit, match="time box"):
        bench_tts.main(["--size", "tiny", "--device", str(DEV), "--frames", "1", "--runs", "1",
                        "--baseline-frames", "0", "--no-compare-modules",
                        "--variants", "torch:bf16:persistent,triton:int8", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["partial"] is True and "variant_triton:int8" not in saved
    v = saved["variant_torch:bf16:persistent"]
    assert (v["kernels"], v["backbone_kernels"]) == ("torch", "persistent"), v
    assert v["triton_launches_per_frame"] == 1 and v["gen_ms_per_frame"] > 0
    assert 0 < v["backbone_ms_per_frame"] < v["gen_ms_per_frame"]
    # the persistent backbone's barriers; the torch depth decoder has none. Their cost is timed on CUDA only
    assert v["barriers_per_frame"] == 5 * 2 and saved["barriers_per_frame"] == 0 and "barrier_ms_per_frame" not in v


def test_barrier_loop_passes_every_barrier_and_resets():
    """The kernel fern.bench.tts times one grid barrier with: n barriers, counters reset for the next launch, n in
    sync[3]. One program here (the interpreter runs programs one after another); many on a GPU (test_csm_gpu)."""
    from fern.tts.csm.fused import MAX_SPINS

    sync = torch.zeros(4, dtype=torch.int32, device=DEV)
    for n in (7, 3):
        K.launch("_barrier_loop", (1,), sync, n, MAX_SPINS=MAX_SPINS)
        assert sync.tolist() == [0, 0, 0, n]


@pytest.mark.parametrize(("kernels", "backbone", "names"), [("persistent", "torch", "tts.kernels=triton"),
                                                            ("torch", "persistent", "tts.backbone_kernels=triton")])
def test_a_barrier_that_gave_up_is_refused_after_the_first_eager_frame(tiny, kernels, backbone, names):
    """Without CUDA graphs (no warm-up before capture to check after), the engine reads the persistent kernels'
    timed-out flag once, after the first frame, and refuses the path naming the fallback. The flag is set here as a
    barrier that gave up would leave it (programs not all resident: a GPU-only failure)."""
    engine = CsmEngine(tiny, kernels=kernels, backbone_kernels=backbone)
    part = engine.depth if kernels == "persistent" else engine.bb_fused
    engine.prepare([], Segment(torch.tensor([1, 5, 6])))
    assert not engine._barriers_checked
    part.sync[2] = 1
    with pytest.raises(RuntimeError, match=f"gave up waiting at a grid barrier.*{names}"):
        engine._run_frame()
    assert engine._barriers_checked  # once: later frames do not sync to read the flag


@pytest.mark.parametrize("part", ["depth", "backbone"])
def test_a_barrier_that_gave_up_falls_back_to_the_step_kernels_and_the_frame_is_run_again(tiny, part):
    """What tts.kernels=auto does on a GPU where the persistent kernels' programs are not all resident: that part's
    step kernels replace it, and the frame its garbage came from is computed again, so the first frame is the step
    kernels' frame (greedy: the same tokens as an engine built with them) and no frame is skipped."""
    engine = CsmEngine(tiny, kernels="persistent", backbone_kernels="persistent", barrier_fallback=True)
    reference = CsmEngine(tiny, kernels="triton" if part == "depth" else "persistent",
                          backbone_kernels="triton" if part == "backbone" else "persistent")
    for e in (engine, reference):
        e.prepare([], Segment(torch.tensor([1, 5, 6])))
    (engine.depth if part == "depth" else engine.bb_fused).sync[2] = 1
    with K.LaunchCounter() as first:
        engine._run_frame()
    with K.LaunchCounter() as steps:
        reference._run_frame()
    assert (engine.kernels, engine.backbone_kernels) == (reference.kernels, reference.backbone_kernels)
    # the persistent frame (both kernels once), then the frame again: the reference's launches
    assert first.launches - steps.launches == {"triton:depth_frame": 1, "triton:backbone_frame": 1}
    assert engine.frame_out.tolist() == reference.frame_out.tolist()
    assert engine.pos.item() == reference.pos.item() == 3  # one frame after the prompt's 3 rows, not two
    engine._run_frame()
    reference._run_frame()
    assert engine.frame_out.tolist() == reference.frame_out.tolist()


def test_persistent_kernels_that_fail_their_first_frame_give_way_to_the_step_kernels(tiny, monkeypatch):
    """auto probes its persistent kernels with one frame when the engine is built: a launch that raises there (a GPU
    whose registers or shared memory the kernel does not fit: a Triton error at launch) leaves the step kernels in
    their place, and the engine then generates their tokens. The failure is injected at the launch; nothing else
    is replaced."""
    real = K.launch

    def launch(name, *args, **kwargs):
        if name == "_depth_frame":
            raise RuntimeError("out of resource: shared memory, Required: 300000, Hardware limit: 232448")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(K, "launch", launch)
    engine = CsmEngine(tiny, kernels="persistent", backbone_kernels="persistent", barrier_fallback=True)
    monkeypatch.setattr(K, "launch", real)
    assert (engine.kernels, engine.backbone_kernels) == ("triton", "triton")
    seg = Segment(torch.tensor([1, 5, 6]))
    steps = CsmEngine(tiny, kernels="triton", backbone_kernels="triton")
    assert torch.equal(torch.cat(list(engine.generate([], seg, 3))), torch.cat(list(steps.generate([], seg, 3))))


@pytest.mark.parametrize("fallback", [True, False])
def test_a_barrier_that_gives_up_later_is_caught_after_the_utterance(tiny, fallback, caplog):
    """A barrier can give up mid-session (another process holding SMs): the flag is read again after each
    utterance, when the GPU is idle anyway. auto: an error in the log (that utterance was noise) and the step kernels
    from the next utterance on; a named persistent kernel: the error is raised."""
    import logging

    engine = CsmEngine(tiny, kernels="persistent", backbone_kernels="torch", barrier_fallback=fallback)
    seg = Segment(torch.tensor([1, 5, 6]))
    list(engine.generate([], seg, 1))  # the first frame's check passes
    engine.depth.sync[2] = 1
    if not fallback:
        with pytest.raises(RuntimeError, match="gave up waiting at a grid barrier"):
            list(engine.generate([], seg, 2))
        return
    with caplog.at_level(logging.ERROR, logger="fern.tts.csm.engine"):
        list(engine.generate([], seg, 2))
    assert engine.kernels == "triton" and "its audio is noise" in caplog.text
    reference = CsmEngine(tiny, kernels="triton", backbone_kernels="torch")
    assert torch.equal(torch.cat(list(engine.generate([], seg, 3))), torch.cat(list(reference.generate([], seg, 3))))


def test_what_the_kernels_resolved_to_is_logged_beside_the_setting(tiny, tmp_path):
    """tts.kernels=auto says what was asked; the MLflow run also says what ran (tts.applied.*), so a sweep member
    that fell back or ran torch on a CPU is told apart."""
    from fern.app import applied_stage_params
    from fern.tracking.mlflow_tracker import MlflowTracker

    synth = make_synth(tiny, mimi=make_tiny_mimi(), kernels="auto", backbone_kernels="auto")
    applied = applied_stage_params(synth)
    assert applied == {"tts.applied.kernels": "torch", "tts.applied.backbone_kernels": "torch",
                       "tts.applied.weights": "bf16"}
    assert applied_stage_params(object()) == {}  # a stage without a CSM engine (espeak) adds nothing
    tracker = MlflowTracker("kernels", f"sqlite:///{tmp_path / 'mlflow.db'}", "applied")
    tracker.log_params(applied)
    run_id = tracker.run_id
    tracker.close("FINISHED")
    import mlflow

    params = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).data.params
    assert params["tts.applied.kernels"] == "torch"


def test_auto_kernels_are_torch_on_a_cpu_and_fall_back_where_they_were_chosen(tiny, caplog):
    """auto means the persistent kernels on CUDA only (Triton's interpreter is for tests); on a CPU both parts run
    torch with no warning (the expected path there, not a problem). auto also arms the barrier fallback, which an
    explicit persistent does not (refused with an error, test above)."""
    import logging

    with caplog.at_level(logging.INFO, logger="fern.tts.csm.engine"):
        engine = CsmEngine(tiny, kernels="auto", backbone_kernels="auto")
    assert (engine.kernels, engine.backbone_kernels, engine.depth, engine.bb_fused) == ("torch", "torch", None, None)
    assert engine.barrier_fallback == {"depth": True, "backbone": True}
    named = CsmEngine(tiny, kernels="persistent", backbone_kernels="auto")  # per part: what the config named stays
    assert named.barrier_fallback == {"depth": False, "backbone": True}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
