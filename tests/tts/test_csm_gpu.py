"""GPU checks of the CSM engine: the CUDA-graph (and compiled) frame paths match eager, streaming Mimi with moshi's
CUDA graphs matches the whole decode. Skipped without a CUDA GPU; run on the GPU machine by recipes/gpu_bench.sh."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_synth, make_tiny_csm, make_tiny_mimi, torch_backbone_step

from fern.events import CancelToken

pytestmark = [pytest.mark.gpu, pytest.mark.models,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def _no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _frames(synth, text: str, n: int) -> torch.Tensor:
    return torch.cat(list(synth.engine.generate([], synth._segment(text, 0), n))).cpu()


def test_tiny_graph_path_matches_eager_and_transformers():
    model = make_tiny_csm(device="cuda")
    mimi = make_tiny_mimi(device="cuda")
    eager = make_synth(model, mimi=mimi, device="cuda", cuda_graphs=False)
    text = "Graph capture check."
    ref = _frames(eager, text, 8)
    graphed = make_synth(model, mimi=make_tiny_mimi(device="cuda"), device="cuda", cuda_graphs=True)
    assert torch.equal(_frames(graphed, text, 8), ref)
    assert torch.equal(_frames(graphed, text, 8), ref)  # replays of the same graph
    emb = eager.engine.embed_segment(eager._segment(text, 0))
    out = model.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long,
                         device="cuda"), max_new_tokens=8, do_sample=False)
    assert torch.equal(out[0].cpu(), ref)


def test_tiny_compiled_graph_matches_eager():
    model = make_tiny_csm(device="cuda")
    eager = make_synth(model, mimi=make_tiny_mimi(device="cuda"), device="cuda")
    text = "Compile check."
    ref = _frames(eager, text, 6)
    compiled = make_synth(model, mimi=make_tiny_mimi(device="cuda"), device="cuda", cuda_graphs=True, compile=True)
    assert torch.equal(_frames(compiled, text, 6), ref)


def test_streaming_mimi_cuda_graphs_equal_whole_decode():
    model = make_tiny_csm(device="cuda")
    synth = make_synth(model, mimi=make_tiny_mimi(seed=4, device="cuda"), device="cuda", cuda_graphs=True,
                       max_audio_s=0.8, chunk_frames=3)
    ref = make_tiny_mimi(seed=4, device="cuda")
    for _ in range(2):  # second utterance: reset_streaming keeps moshi's graphs valid
        audio = np.concatenate(list(synth.stream("Decode on the GPU.", CancelToken())))
        with torch.no_grad():
            whole = ref.decode(synth.last_frames.T[None].long().cuda())[0, 0].cpu().numpy()
        assert audio.shape == whole.shape and np.abs(audio - whole).max() <= 1e-4


def test_full_size_bf16_graph_matches_eager():
    from fern.tts.csm.loading import build_mimi, random_csm
    from fern.tts.csm.synthesizer import CsmSynthesizer
    from fern.tts.csm.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    model = random_csm("cuda", torch.bfloat16)
    mimi = build_mimi("cuda")
    opts = dict(temperature=0.0, warmup=False, device="cuda", keep_history=False)
    eager = CsmSynthesizer(_modules=(model, ByteTokenizer(), mimi), cuda_graphs=False, **opts)
    text = "Full size check of the captured frame graph."
    ref = _frames(eager, text, 6)
    # a Mimi streams for one synthesizer at a time: the second one gets its own
    graphed = CsmSynthesizer(_modules=(model, ByteTokenizer(), build_mimi("cuda")), cuda_graphs=True, **opts)
    assert torch.equal(_frames(graphed, text, 6), ref)


# ---- the fused depth decoder (fern.tts.csm.fused / kernels) on the GPU -----------------------------------------

@pytest.mark.parametrize("kernels", ["triton", "persistent"])
def test_tiny_fused_triton_equals_module_path_fp32(kernels):
    """fp32 on the GPU: the compiled kernels give the module path's greedy tokens, eagerly and as a graph replay.
    The persistent kernel runs here with as many programs as its largest phase has blocks (all resident)."""
    from fern.tts.csm.engine import CsmEngine, Segment

    model = make_tiny_csm(device="cuda")
    seg = Segment(torch.tensor([1, 40, 41, 42, 9]))
    ref = torch.cat(list(CsmEngine(model, fast=False).generate([], seg, 6)))
    for graphs in (False, True):
        engine = CsmEngine(model, kernels=kernels, cuda_graphs=graphs)
        assert engine.kernels == kernels
        assert torch.equal(torch.cat(list(engine.generate([], seg, 6))), ref), graphs
        assert not engine.depth.barrier_timed_out()


@pytest.fixture(scope="module")
def full_bf16():
    from fern.tts.csm.loading import random_csm

    torch.manual_seed(0)
    return random_csm("cuda", torch.bfloat16)


@pytest.mark.parametrize("mode", ["steps", "frame"])
@pytest.mark.parametrize("kind", ["bf16", "int8", "fp8"])
def test_full_size_fused_kernels_equal_their_torch_reference(full_bf16, kind, mode):
    """CSM-1B depth-decoder shapes (1024 wide, 8 heads of 128, 8192 MLP, 2051 vocab): the kernels against the same
    math in fp32 torch on the same weights, teacher-forced over 31 codebooks. Tolerance: residual stream within
    1e-3 relative; tokens equal but for near-ties of fp32 summation order (>= 29 of 31)."""
    from fern.tts.csm import fused
    from fern.tts.csm.engine import CsmEngine

    engine = CsmEngine(full_bf16)
    tri, ref = fused.FusedDepth(engine, "triton", kind, mode=mode), fused.FusedDepth(engine, "torch", kind, mode=mode)
    if mode == "frame":
        print(f"persistent kernel: {tri.grid} programs")
    g = torch.Generator(device="cuda").manual_seed(1)
    # the backbone's rows in the model's dtype, as the engine passes them (the persistent kernel picks its input row
    # from them or the bf16 embedding table: one pointer type; its first H200 run refused fp32 here)
    x = torch.randn(1, 2, tri.D, device="cuda", generator=g, dtype=torch.bfloat16)
    force = torch.randint(0, tri.V, (tri.n_cb,), device="cuda", generator=g)
    c0 = force[:1]
    a = tri.run(x, c0, None, 0, force=force).clone()
    b = ref.run(x, c0, None, 0, force=force).clone()
    assert float((tri.h - ref.h).abs().max() / ref.h.abs().max()) <= 1e-3
    assert int((a == b).sum()) >= 29 + 1, (a, b)  # codebook 0 is given
    noise = -0.9 * torch.empty(tri.n_cb - 1, tri.V, device="cuda").exponential_(1, generator=g).log()
    a = tri.run(x, c0, noise, 50, force=force).clone()
    b = ref.run(x, c0, noise, 50, force=force).clone()
    assert int((a == b).sum()) >= 29 + 1, (a, b)
    assert not tri.barrier_timed_out()
    if mode == "frame":
        # reset by the last program out (ready for the next launch); the barriers passed, counted by the kernel
        assert tri.sync.tolist() == [0, 0, 0, tri.barriers_per_frame()]


def test_full_size_fused_path_agrees_with_module_path_and_replays_exactly(full_bf16):
    """bf16 CSM-1B: the fused Triton depth decoder (fp32 accumulation and residual) against the transformers module
    path (bf16 roundings after every op), teacher-forced; then the fused frame as a CUDA graph == eager."""
    from fern.bench.csm_quant import agreement
    from fern.tts.csm.engine import CsmEngine, Segment

    res = agreement(full_bf16, full_bf16, 4, ["bf16"], "triton", list(range(1, 25)), ref_fast=False)
    print("fused triton bf16 vs module path, teacher-forced token agreement:", res["bf16"])
    assert res["bf16"] >= 0.8, res
    seg = Segment(torch.tensor([1, 40, 41, 42, 9]))
    eager = torch.cat(list(CsmEngine(full_bf16, kernels="triton").generate([], seg, 4)))
    graphed = torch.cat(list(CsmEngine(full_bf16, kernels="triton", cuda_graphs=True).generate([], seg, 4)))
    assert torch.equal(graphed, eager)


def test_full_size_persistent_kernel_agrees_with_module_path_and_replays_exactly(full_bf16):
    """The persistent kernel (one launch per frame, grid barriers) on CSM-1B: teacher-forced agreement with the
    module path like the step kernels', and the frame as a CUDA graph == eager, with no barrier that gave up."""
    from fern.bench.csm_quant import agreement
    from fern.tts.csm.engine import CsmEngine, Segment

    res = agreement(full_bf16, full_bf16, 4, ["bf16"], "triton", list(range(1, 25)), ref_fast=False,
                    modes=("frame",))
    print("persistent bf16 vs module path, teacher-forced token agreement:", res["frame_bf16"])
    assert res["frame_bf16"] >= 0.8, res
    seg = Segment(torch.tensor([1, 40, 41, 42, 9]))
    engines = [CsmEngine(full_bf16, kernels="persistent", cuda_graphs=g) for g in (False, True)]
    eager, graphed = (torch.cat(list(e.generate([], seg, 4))) for e in engines)
    assert torch.equal(graphed, eager)
    assert not any(e.depth.barrier_timed_out() for e in engines)


def test_full_size_l2_prefetch_changes_no_token(full_bf16):
    """The persistent kernels' L2 prefetch (PREFETCH=1, bb.prefetch=1) is a hint: CSM-1B's frames with it equal
    those without it, eagerly and as graph replays, and no barrier gives up."""
    from fern.tts.csm.engine import CsmEngine, Segment

    seg = Segment(torch.tensor([1, 40, 41, 42, 9]))
    both = dict(kernels="persistent", backbone_kernels="persistent")
    ref = torch.cat(list(CsmEngine(full_bf16, **both).generate([], seg, 4)))
    for graphs in (False, True):
        engine = CsmEngine(full_bf16, **both, cuda_graphs=graphs, blocks={"PREFETCH": 1},
                           backbone_blocks={"prefetch": 1})
        assert engine.depth.blocks["PREFETCH"] == 1 and engine.bb_fused.blocks["prefetch"] == 1
        assert torch.equal(torch.cat(list(engine.generate([], seg, 4))), ref), graphs
        assert not engine.depth.barrier_timed_out() and not engine.bb_fused.barrier_timed_out()


def test_full_size_pipelined_loads_change_no_token(full_bf16):
    """The persistent kernels' pipelined K loops (SA / SG / SD, bb.*_stages: the same arithmetic, loads issued
    earlier through shared memory) give CSM-1B the frames of the same kernels without pipelining, eagerly and as
    graph replays, and no barrier gives up."""
    from fern.tts.csm.engine import CsmEngine, Segment

    seg = Segment(torch.tensor([1, 40, 41, 42, 9]))
    both = dict(kernels="persistent", backbone_kernels="persistent")
    flat = CsmEngine(full_bf16, **both, blocks={"SA": 1, "SG": 1, "SD": 1},
                     backbone_blocks={"qkv_stages": 1, "o_stages": 1, "gu_stages": 1, "down_stages": 1})
    ref = torch.cat(list(flat.generate([], seg, 4)))
    for graphs in (False, True):
        engine = CsmEngine(full_bf16, **both, cuda_graphs=graphs)
        assert engine.depth.blocks["SD"] > 1 and engine.bb_fused.blocks["down_stages"] > 1
        assert torch.equal(torch.cat(list(engine.generate([], seg, 4))), ref), graphs
        assert not engine.depth.barrier_timed_out() and not engine.bb_fused.barrier_timed_out()


@pytest.mark.parametrize("backbone", ["triton", "persistent"])
def test_tiny_triton_backbone_equals_module_path_fp32(backbone):
    """fp32 on the GPU: the backbone's Triton step or persistent kernel (with the persistent depth decoder) gives
    the module path's greedy tokens, eagerly and as a graph replay."""
    from fern.tts.csm.engine import CsmEngine, Segment

    model = make_tiny_csm(device="cuda")
    seg = Segment(torch.tensor([1, 40, 41, 42, 9]))
    ref = torch.cat(list(CsmEngine(model, fast=False).generate([], seg, 6)))
    for graphs in (False, True):
        engine = CsmEngine(model, kernels="persistent", backbone_kernels=backbone, cuda_graphs=graphs)
        assert engine.backbone_kernels == backbone
        assert torch.equal(torch.cat(list(engine.generate([], seg, 6))), ref), graphs
        assert not engine.bb_fused.barrier_timed_out()


@pytest.mark.parametrize("mode", ["layers", "frame"])
@torch.no_grad()
def test_full_size_triton_backbone_step_equals_the_torch_step(full_bf16, mode):
    """CSM-1B backbone shapes (16 layers, 2048 wide, 32 heads / 8 KV heads of 64, 8192 MLP) after a 300-row
    prompt (5 attention chunks): the Triton step's (or persistent kernel's) hidden state and K/V rows against the
    torch fast path's. The Triton kernels keep the residual in fp32, torch rounds it to bf16 after every op: within
    5e-2 relative (a wrong rope, chunk merge or cache row is off by O(1)). Tokens are checked exactly on the tiny
    fp32 model above."""
    from fern.tts.csm.engine import CsmEngine, Segment
    from fern.tts.csm.fused_backbone import FusedBackbone

    engine = CsmEngine(full_bf16)
    pos = engine.prepare([], Segment(torch.arange(3, 304)))
    emb, at, ref, ref_kv, before = torch_backbone_step(engine)
    ref, ref_kv = ref.float(), [row.float() for row in ref_kv]
    fused = FusedBackbone(engine, mode=mode)
    out = fused.run(emb, at).float()
    assert not fused.barrier_timed_out()
    print(f"backbone step ({mode}), Triton vs torch, max relative difference:",
          float((out - ref).abs().max() / ref.abs().max()))
    assert float((out - ref).abs().max() / ref.abs().max()) <= 5e-2
    for i, kv in enumerate(engine.bb.kv):
        assert float((kv[:, :, :, pos].float() - ref_kv[i]).abs().max() / ref_kv[i].abs().max()) <= 5e-2, i
        assert torch.equal(kv[:, :, :, :pos], before[i][:, :, :, :pos])


def test_grid_barrier_timing_passes_every_barrier():
    """fern.bench.tts's grid barrier figure: one program per SM, every barrier passed (the kernel's own count), none
    timed out; a few microseconds at most (a barrier that never waited would be ~0, one that waits for the bounded
    spin's end ~1 s)."""
    from fern.bench.tts import _grid_barrier_us

    res = _grid_barrier_us("cuda")
    print("one grid barrier:", res)
    assert res["grid_barrier_programs"] == torch.cuda.get_device_properties(0).multi_processor_count
    assert 0.05 < res["grid_barrier_us"] < 50


def test_auto_kernels_are_the_persistent_ones_and_fall_back_under_graphs_too():
    """tts.kernels=auto (optim=full) on CUDA: both persistent kernels, the frames of an engine that names them; a
    barrier that gave up during the warm-up before graph capture swaps that part for its step kernels, and the
    captured graph gives the step kernels' frames."""
    from fern.tts.csm.engine import CsmEngine, Segment

    model = make_tiny_csm(device="cuda")
    seg = Segment(torch.tensor([1, 5, 6]))
    auto = CsmEngine(model, kernels="auto", backbone_kernels="auto", cuda_graphs=True)
    assert (auto.kernels, auto.backbone_kernels) == ("persistent", "persistent")
    assert auto.barrier_fallback == {"depth": True, "backbone": True}
    named = CsmEngine(model, kernels="persistent", backbone_kernels="persistent", cuda_graphs=True)
    assert torch.equal(torch.cat(list(auto.generate([], seg, 4))), torch.cat(list(named.generate([], seg, 4))))
    fallback = CsmEngine(model, kernels="auto", backbone_kernels="auto", cuda_graphs=True)
    fallback.depth.sync[2] = 1  # as a barrier that gave up leaves it
    steps = CsmEngine(model, kernels="triton", backbone_kernels="persistent", cuda_graphs=True)
    assert torch.equal(torch.cat(list(fallback.generate([], seg, 4))), torch.cat(list(steps.generate([], seg, 4))))
    assert (fallback.kernels, fallback.backbone_kernels) == ("triton", "persistent")
