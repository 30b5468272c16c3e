"""CSM streaming TTS on tiny random-weight models (CPU): exactness against transformers and moshi, streaming,
stopping, context window, LoRA and bad input. No mocks: real transformers, moshi and peft code paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_synth, make_tiny_csm, make_tiny_mimi

from fern.bench.opcount import count_ops
from fern.errors import MissingWeightsError
from fern.events import CancelToken
from fern.tts.csm.engine import CsmEngine

pytestmark = pytest.mark.models  # real models: the full tier (pytest -m 'not models' skips them)

N = 5  # frames compared against transformers generate (~0.3 s each there)


def _reference(model, emb: torch.Tensor, n: int) -> torch.Tensor:
    """Stock transformers greedy generate from the same backbone input rows -> (frames, 32)."""
    out = model.generate(
        inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long), max_new_tokens=n,
        do_sample=False,
    )
    return out[0]


def _mine(synth, context, text: str, n: int) -> torch.Tensor:
    seg = synth._segment(text, 0)
    return torch.cat(list(synth.engine.generate(context, seg, n))).cpu()


@pytest.mark.parametrize("text", ["Hello world.", "A second, slightly longer prompt to speak!", "Ünïcode ok?"])
def test_greedy_matches_transformers_generate(tiny_csm, text):
    synth = make_synth(tiny_csm)
    seg = synth._segment(text, 0)
    ref = _reference(tiny_csm, synth.engine.embed_segment(seg), N)
    mine = _mine(synth, [], text, N)
    assert ref.shape == (N, 32)
    assert torch.equal(mine, ref)  # all 32 codebooks of every frame


def test_greedy_matches_with_voice_prompt_and_history(tiny_csm):
    synth = make_synth(tiny_csm, max_audio_s=0.4)
    rng = np.random.default_rng(0)
    synth.set_context([("Earlier words.", rng.standard_normal(24000).astype(np.float32) * 0.1, 24000, 1)])
    for _chunk in synth.stream("First utterance.", CancelToken()):  # becomes history context
        pass
    context = list(synth._prompt) + list(synth._history)
    assert len(context) == 2 and synth.engine._cached == context
    text = "Second utterance, with context."
    emb = torch.cat([synth.engine.embed_segment(s) for s in context] + [synth.engine.embed_segment(
        synth._segment(text, 0))], dim=1)
    ref = _reference(tiny_csm, emb, N)
    mine = _mine(synth, context, text, N)
    assert synth.engine.stats["reused_rows"] == sum(len(s) for s in context)  # KV prefix reused, not recomputed
    assert synth.engine.stats["prefill_rows"] == len(synth._segment(text, 0)) - 1
    assert torch.equal(mine, ref)


def test_fast_layers_match_the_module_path_with_far_fewer_ops(tiny_csm):
    """The fast path (fused weights, addmm residuals, one rope pass, one cache write, projected depth embeddings)
    must give the module path's tokens while dispatching far fewer operators per frame (kernels, on a GPU)."""
    seg = make_synth(tiny_csm)._segment("Count the kernels.", 0)
    frames, ops = {}, {}
    for fast in (True, False):
        engine = CsmEngine(tiny_csm, fast=fast)
        frames[fast] = torch.cat(list(engine.generate([], seg, 4)))
        engine.prepare([], seg)
        ops[fast] = sum(count_ops(torch.no_grad()(engine._run_frame)).values())
    assert torch.equal(frames[True], frames[False])
    assert ops[True] <= 0.6 * ops[False], ops


def test_adjacent_weights_in_separate_storages_are_concatenated_not_aliased():
    """The CUDA caching allocator packs small tensors back to back; adjacent is not the same storage."""
    from fern.tts.csm.engine import _concat_as_views

    block = np.arange(48, dtype=np.float32).reshape(12, 4)
    linears = [torch.nn.Linear(4, 4, bias=False) for _ in range(3)]
    for i, m in enumerate(linears):  # three storages (numpy slices), each exactly after the previous one
        m.weight = torch.nn.Parameter(torch.from_numpy(block[4 * i : 4 * i + 4]), requires_grad=False)
    assert len({m.weight.untyped_storage().nbytes() for m in linears}) == 1
    fused = _concat_as_views(linears)
    assert torch.equal(fused, torch.from_numpy(block)) and fused.untyped_storage().nbytes() == block.nbytes
    assert all(m.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr() for m in linears)


def test_a_second_engine_reuses_the_fused_weights(tiny_csm):
    """Re-concatenating would free the tensor an earlier engine's CUDA graph reads."""
    layer = tiny_csm.backbone_model.layers[0]
    CsmEngine(tiny_csm, fast=False)  # the module path lays the weights out too, so a later engine frees nothing
    fused = layer._fern_qkv
    CsmEngine(tiny_csm)
    assert layer._fern_qkv.data_ptr() == fused.data_ptr() == layer.self_attn.q_proj.weight.data_ptr()
    assert torch.equal(layer._fern_qkv, fused)


@pytest.mark.slow
def test_full_size_architecture_greedy_matches_transformers():
    """CSM-1B's real shapes (head dims 64/128, GQA 32/8 and 8/2), random weights, fp32: the fast path (fused
    weights, folded rope, projected embeddings) gives transformers' frames. ~7 GB of RAM, ~40 s."""
    from transformers import CsmConfig, CsmForConditionalGeneration

    from fern.tts.csm.engine import Segment

    torch.manual_seed(0)
    config = CsmConfig()
    config.max_position_embeddings = 256  # a smaller static cache; the layers are CSM-1B's
    with torch.no_grad():
        model = CsmForConditionalGeneration(config).eval()
        engine = CsmEngine(model)
        assert engine.bb.fused and engine.dd.fused and engine._dd_embed_projected is not None
        seg = Segment(torch.tensor([128000, 791, 6864, 315, 9822, 374, 12366, 13, 128001]))
        mine = torch.cat(list(engine.generate([], seg, 3)))
        emb = engine.embed_segment(seg)
    assert torch.equal(mine, _reference(model, emb, 3))


def test_sampler_draws_from_the_top_k_softmax(tiny_csm):
    engine = CsmEngine(tiny_csm)
    engine.temperature, engine.top_k = 0.8, 5
    torch.manual_seed(1)
    logits = torch.randn(1, engine.vocab) * 2
    noise = torch.cat([engine._frame_noise() for _ in range(1500)])  # 48000 rows of per-frame noise
    ids = engine._sample(logits.expand(noise.shape[0], -1), noise)
    top = logits[0].topk(5)
    assert torch.isin(ids, top.indices).all()  # never outside the top k
    freq = (ids[:, None] == top.indices[None]).float().mean(0)
    expected = torch.softmax(top.values / 0.8, dim=-1)
    assert (freq - expected).abs().max() < 0.01, (freq, expected)
    engine.top_k = 0  # no top-k: Gumbel-max over the whole vocabulary
    full = engine._sample(logits.expand(20000, -1), torch.cat([engine._frame_noise() for _ in range(625)]))
    assert full.unique().numel() > 5


@pytest.mark.slow
def test_compiled_frame_matches_eager_in_three_graphs(tiny_csm):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # graphs compiled by earlier tests count there too
    text = "Compile on the CPU."
    ref = _mine(make_synth(tiny_csm), [], text, 4)
    compiled = make_synth(tiny_csm, compile=True)
    assert torch.equal(_mine(compiled, [], text, 4), ref)
    assert torch.equal(_mine(compiled, [], "And again, longer this time.", 3),
                       _mine(make_synth(tiny_csm), [], "And again, longer this time.", 3))
    # backbone step, depth step 1 (two rows) and depth steps 2..31 (one row): no recompiles per step or utterance
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 3


def test_streaming_mimi_equals_whole_decode(tiny_csm):
    mimi = make_tiny_mimi(seed=3)
    ref = make_tiny_mimi(seed=3)
    synth = make_synth(tiny_csm, mimi=mimi, max_audio_s=0.56, first_chunk_frames=2, chunk_frames=2)
    chunks = list(synth.stream("Decode me.", CancelToken()))
    audio = np.concatenate(chunks)
    frames = synth.last_frames
    assert frames.shape == (7, 32) and [len(c) for c in chunks] == [3840, 3840, 3840, 1920]
    with torch.no_grad():
        whole = ref.decode(frames.T[None].long())[0, 0].numpy()
    assert audio.dtype == np.float32 and audio.shape == whole.shape
    assert np.abs(audio - whole).max() <= 1e-4


def test_first_chunk_arrives_before_generation_ends(tiny_csm):
    synth = make_synth(tiny_csm, max_audio_s=0.8, first_chunk_frames=1, chunk_frames=3)
    gen = synth.stream("Stream this.", CancelToken())
    first = next(gen)
    assert len(first) == 1920  # one 80 ms frame at 24 kHz
    assert synth.stats["first_chunk_frame"] == 1
    pos_at_first = int(synth.engine.pos)
    rest = list(gen)
    assert int(synth.engine.pos) == pos_at_first + 9  # nine more frames were generated after the first chunk
    assert [len(c) for c in rest] == [5760, 5760, 5760]


def test_whole_utterance_mode_yields_once(tiny_csm):
    synth = make_synth(tiny_csm, streaming=False, max_audio_s=0.4)
    chunks = list(synth.stream("All at once.", CancelToken()))
    assert len(chunks) == 1 and len(chunks[0]) == 5 * 1920


def test_cancel_stops_at_next_frame(tiny_csm):
    synth = make_synth(tiny_csm, max_audio_s=2.0, first_chunk_frames=1, chunk_frames=1)
    cancel = CancelToken()
    got = []
    for chunk in synth.stream("Interrupt me.", cancel):
        got.append(chunk)
        cancel.cancel()
    assert len(got) == 1 and synth.engine.pos.item() < 40


def test_eos_frame_stops_generation():
    model = make_tiny_csm(seed=5)
    with torch.no_grad():  # all-zero heads: greedy picks code 0 everywhere -> the all-zero EOS frame
        model.lm_head.weight.zero_()
        model.depth_decoder.codebooks_head.weight.zero_()
    synth = make_synth(model, max_audio_s=2.0)
    seg = synth._segment("Stop.", 0)
    ref = _reference(model, synth.engine.embed_segment(seg), 10)
    assert ref.shape[0] == 1 and (ref == 0).all()  # transformers stops after the EOS frame too
    chunks = list(synth.stream("Stop.", CancelToken()))
    assert chunks == [] and synth.engine.last_eos and synth.stats["frames"] == 0


def test_launching_ahead_keeps_the_cached_history_exact():
    """On CUDA frame t+1 is launched before frame t's EOS check; the frame launched past EOS writes a row the
    committed history must not keep (here the EOS frame's last code is not 0, so its row differs)."""
    model = make_tiny_csm(seed=5)
    with torch.no_grad():  # codebooks 0..30 always 0 (EOS at the first frame), codebook 31 free
        model.lm_head.weight.zero_()
        model.depth_decoder.codebooks_head.weight[:-1].zero_()
    caches = {}
    for ahead in (False, True):
        synth = make_synth(model, max_audio_s=0.4)
        synth.engine.lookahead = ahead
        assert list(synth.stream("Stop here.", CancelToken())) == [] and synth.engine.last_eos
        if not ahead:
            assert synth.engine.frame_out[0, -1] != 0  # the generated EOS frame is not the all-zero one
        rows = sum(len(s) for s in synth.engine._cached)
        assert rows == len(synth._segment("Stop here.", 0)) + 1
        caches[ahead] = torch.stack([kv[..., :rows, :] for kv in synth.engine.bb.kv])
    assert torch.equal(caches[True], caches[False])


def test_max_length_bounds_generation(tiny_csm):
    synth = make_synth(tiny_csm, max_audio_s=0.32, chunk_frames=2)
    audio = np.concatenate(list(synth.stream("Bounded.", CancelToken())))
    assert len(audio) == 4 * 1920 and not synth.engine.last_eos


def test_context_beyond_window_is_trimmed():
    model = make_tiny_csm(seed=2, max_positions=96)
    synth = make_synth(model, max_audio_s=0.48)
    for i in range(6):  # each utterance adds ~20 rows of history; the window holds 96
        audio = np.concatenate(list(synth.stream(f"Utterance number {i}.", CancelToken())))
        assert len(audio) == 6 * 1920
        used = sum(len(s) for s in synth._prompt) + sum(len(s) for s in synth._history)
        assert used <= 96
    assert 0 < len(synth._history) < 6  # oldest dropped first
    text = "Final words."
    context = synth._layout(len(synth._segment(text, 0)))  # trims again for this text
    emb = torch.cat([synth.engine.embed_segment(s) for s in context + [synth._segment(text, 0)]], dim=1)
    ref = _reference(model, emb, 4)
    assert torch.equal(_mine(synth, context, text, 4), ref)  # trimmed context re-prefilled correctly


def test_voice_prompt_longer_than_2048_positions_is_trimmed(tiny_csm):
    synth = make_synth(tiny_csm, max_audio_s=0.24)
    long_text = "word " * 160
    rng = np.random.default_rng(1)
    segments = [(long_text, rng.standard_normal(24000 * 2).astype(np.float32) * 0.1, 24000, 0) for _ in range(3)]
    synth.set_context(segments)
    assert sum(len(s) for s in synth._prompt) > 2048
    audio = np.concatenate(list(synth.stream("Still speaks.", CancelToken())))
    assert len(audio) == 3 * 1920
    assert sum(len(s) for s in synth._prompt) <= 2048 and len(synth._prompt) < 3


def test_lora_changes_output_and_round_trips(tmp_path):
    peft = pytest.importorskip("peft")
    text = "Adapted voice."
    base = _mine(make_synth(make_tiny_csm(seed=7)), [], text, 3)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
                          init_lora_weights=False)
    torch.manual_seed(11)
    peft_model = peft.get_peft_model(make_tiny_csm(seed=7), cfg)
    peft_model.save_pretrained(tmp_path / "adapter")
    in_memory = _mine(make_synth(peft_model.merge_and_unload()), [], text, 3)
    loaded = make_synth(make_tiny_csm(seed=7), lora=str(tmp_path / "adapter"))
    unmerged = make_synth(make_tiny_csm(seed=7), lora=str(tmp_path / "adapter"), lora_merge=False)
    assert not torch.equal(in_memory, base)
    assert torch.equal(_mine(loaded, [], text, 3), in_memory)
    assert torch.equal(_mine(unmerged, [], text, 3), in_memory)


def test_empty_text_yields_nothing(tiny_csm):
    synth = make_synth(tiny_csm)
    assert list(synth.stream("", CancelToken())) == []
    assert list(synth.stream("   \n\t", CancelToken())) == []


def test_very_long_text_is_split_into_sentences(tiny_csm):
    synth = make_synth(tiny_csm, max_text_tokens=48, max_audio_s=0.08)
    text = " ".join(f"This is sentence number {i} of a long reply." for i in range(40))
    pieces = synth.split_text(text)
    assert len(pieces) >= 40 and all(len(synth._ids(p, 0)) <= 48 for p in pieces)
    assert " ".join(pieces) == text
    few = " ".join(text.split()[:40])
    chunks = list(synth.stream(few, CancelToken()))
    assert len(chunks) == len(synth.split_text(few)) >= 4


def test_missing_weights_error_names_repo_and_cache(tmp_path):
    from fern.tts.csm.synthesizer import CsmSynthesizer

    with pytest.raises(MissingWeightsError) as info:
        CsmSynthesizer(model="sesame/csm-1b", cache_dir=str(tmp_path / "hub"), local_files_only=True, device="cpu",
                       warmup=False)
    assert "sesame/csm-1b" in str(info.value) and str(tmp_path / "hub") in str(info.value)


def test_missing_mimi_weights_error_names_repo(tmp_path):
    from fern.tts.csm.loading import load_mimi

    with pytest.raises(MissingWeightsError, match="kyutai/moshiko-pytorch-bf16"):
        load_mimi("kyutai/moshiko-pytorch-bf16", None, "cpu", cache_dir=str(tmp_path), local_files_only=True)


def test_wrong_rate_context_audio_is_resampled(tiny_csm):
    synth = make_synth(tiny_csm)
    t16 = np.arange(16000) / 16000
    t24 = np.arange(24000) / 24000
    synth.set_context([("Sixteen kilohertz.", (0.3 * np.sin(2 * np.pi * 220 * t16)).astype(np.float32), 16000, 0)])
    at16 = synth._prompt[0].audio
    synth.set_context([("Sixteen kilohertz.", (0.3 * np.sin(2 * np.pi * 220 * t24)).astype(np.float32), 24000, 0)])
    at24 = synth._prompt[0].audio
    assert at16.shape == at24.shape == (13 + 1, 32)  # 1 s -> 12.5 frames (+ padding) and the EOS frame
    assert (at16[-1] == 0).all()
    assert (at16[:-1] == at24[:-1]).float().mean() > 0.5  # same content after resampling


def test_presets_compose():
    from hydra import compose, initialize_config_dir

    from fern.config import register
    from fern.paths import CONF_DIR

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, streaming in [("csm_streaming", True), ("csm", False)]:
            cfg = compose("run", overrides=[f"tts={name}", "optim=full"])
            assert cfg.tts._target_ == "fern.tts.csm.synthesizer.CsmSynthesizer"
            assert cfg.tts.streaming is streaming and cfg.tts.cuda_graphs is True
            assert cfg.tts.random_weights is False


def test_preset_instantiates_to_missing_weights_error_offline(tmp_path):
    """The Hydra preset builds the real loader path: offline and without a cache it names the repo and the cache."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from fern.config import register
    from fern.paths import CONF_DIR

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("run", overrides=["tts=csm_streaming", "device=cpu", "tts.local_files_only=true",
                                        f"tts.cache_dir={tmp_path}", "tts.warmup=false"])
    with pytest.raises(Exception) as info:  # hydra wraps it in InstantiationException
        instantiate(cfg.tts)
    err = info.value
    while err is not None and not isinstance(err, MissingWeightsError):
        err = err.__cause__
    assert err is not None and "sesame/csm-1b" in str(err) and str(tmp_path) in str(err)
