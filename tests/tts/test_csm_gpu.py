"""GPU checks of the CSM engine: the CUDA-graph (and compiled) frame paths match eager, streaming Mimi with moshi's
CUDA graphs matches the whole decode. Skipped without a CUDA GPU; run on the GPU machine by recipes/gpu_bench.sh."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_synth, make_tiny_csm, make_tiny_mimi

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
