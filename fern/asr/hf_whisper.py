"""Speech recognition with transformers' Whisper (PyTorch): runs wherever torch + transformers do, GPU included.

faster-whisper (CTranslate2) is the default backend, but CTranslate2 is not on every machine (the GPU benchmark
machine has torch + transformers only). This backend loads a transformers-format checkpoint (hub id or local
directory) and decodes with the generic ``GenerationMixin.generate``: the decoder prompt is forced to
``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`` (English-only ``*.en`` checkpoints: start and
no-timestamps only) and timestamp tokens are suppressed. Whisper's own ``generate`` (long-form, fallback, language
detection) changed between transformers 4.x and 5.x; the generic path did not, so this works on both.

Audio over 30 s is cut into 30 s windows transcribed one by one (a turn is rarely that long).

Not done: a static KV cache + torch.compile of the decode step. transformers' generate compiles it with CUDA graphs
("reduce-overhead"), which are not safe to replay from the pipeline's worker threads (pytorch#123177), and the
compile costs tens of seconds of start-up for a 4-layer decoder (large-v3-turbo) that runs ~20 steps per turn.

``random_weights=true`` (BENCHMARKING ONLY) builds the architecture of the size named by ``model`` (e.g.
``openai/whisper-large-v3-turbo``) with random weights and a tokenizer built in code: nothing is downloaded, timing
is real, the text is arbitrary tokens (``max_new_tokens`` bounds it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING

from fern.errors import ConfigValueError, MissingWeightsError

log = logging.getLogger(__name__)


@dataclass
class HFWhisperConfig:
    _target_: str = "fern.asr.hf_whisper.HFWhisperRecognizer"
    model: str = MISSING  # hub repo id (e.g. openai/whisper-large-v3-turbo) or a local transformers Whisper directory
    device: str = "${device}"
    dtype: str = "auto"  # auto (bf16 on a GPU when bf16, else float32) | float32 | bfloat16 | float16
    bf16: bool = "${optim.bf16}"  # type: ignore[assignment]
    attn_implementation: str = "${optim.attn_implementation}"  # eager | sdpa | flash_attention_2
    beam_size: int = 1  # 1: greedy
    language: str = "en"  # forced language token (multilingual checkpoints); English-only ones accept "en" only
    max_new_tokens: int = 200  # per 30 s window; Whisper's decoder holds 448 positions
    # benchmarking only: the architecture of the size named by `model`, random weights, no download; arbitrary text
    random_weights: bool = False
    sample_rate: int = "${io.source.sample_rate}"  # type: ignore[assignment]


SCHEMAS = {"asr": {"hf_whisper": HFWhisperConfig}}

# Whisper's architectures (openai/whisper model dims): d_model, encoder layers, decoder layers, heads, mel bins.
_DIMS = {
    "tiny": (384, 4, 4, 6, 80), "base": (512, 6, 6, 8, 80), "small": (768, 12, 12, 12, 80),
    "medium": (1024, 24, 24, 16, 80), "large": (1280, 32, 32, 20, 80), "large-v2": (1280, 32, 32, 20, 80),
    "large-v3": (1280, 32, 32, 20, 128), "large-v3-turbo": (1280, 32, 4, 20, 128),
}
SIZES = sorted([*_DIMS, *(f"{name}.en" for name in ("tiny", "base", "small", "medium"))])
N_LANGUAGES = {"large-v3": 100, "large-v3-turbo": 100}  # others: 99 (the multilingual vocab of 51865)
SOT, EOT, NO_TIMESTAMPS = "<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>"


def size_of(model: str) -> str:
    """``openai/whisper-large-v3-turbo`` -> ``large-v3-turbo`` (the size a random-weight model is built at)."""
    name = Path(model).name.lower()
    name = name[len("whisper-"):] if name.startswith("whisper-") else name
    if name not in SIZES:
        raise ConfigValueError(f"asr.model={model}: asr.random_weights needs a Whisper size in the name, one of "
                               f"{', '.join(SIZES)} (e.g. openai/whisper-large-v3-turbo)")
    return name


def whisper_vocab(size: str) -> list[str]:
    """Token strings by id, laid out like Whisper's vocabulary of that size (text tokens are placeholders; the
    special tokens sit at their real ids: end of text, start, languages with ``<|en|>`` first, tasks, no-speech,
    no-timestamps, then 1501 timestamps)."""
    english_only = size.endswith(".en")
    n_text = 50256 if english_only else 50257
    n_languages = N_LANGUAGES.get(size, 99)
    tokens = [f"w{i}" for i in range(n_text)] + [EOT, SOT, "<|en|>"]
    tokens += [f"<|lang{i}|>" for i in range(1, n_languages)]
    tokens += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", NO_TIMESTAMPS]
    tokens += [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    return tokens


def code_tokenizer(size: str):
    """A fast tokenizer over ``whisper_vocab(size)``, built in code (no files): decodes ids to words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = whisper_vocab(size)
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token=EOT))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=EOT, bos_token=EOT, eos_token=EOT, pad_token=EOT)
    fast.add_tokens([t for t in tokens if t.startswith("<|")], special_tokens=True)  # skipped when decoding
    return fast


def random_whisper(size: str, device: str, dtype, attn_implementation: str | None = None, config_overrides=None):
    """The Whisper architecture of ``size`` with random weights. BENCHMARKING ONLY: it transcribes nothing."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    d_model, enc, dec, heads, mels = _DIMS[size.removesuffix(".en")]
    tokens = whisper_vocab(size)
    vocab, eot = len(tokens), tokens.index(EOT)
    kw: dict[str, Any] = dict(vocab_size=vocab, num_mel_bins=mels, d_model=d_model, encoder_layers=enc,
                              decoder_layers=dec, encoder_attention_heads=heads, decoder_attention_heads=heads,
                              encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, decoder_start_token_id=eot + 1,
                              pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, begin_suppress_tokens=None)
    kw.update(config_overrides or {})
    config = WhisperConfig(**kw)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    log.warning("asr.random_weights=true: Whisper %s architecture with RANDOM weights, for benchmarking only", size)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config)
    return model.to(dtype=dtype).eval()


def load_whisper(model: str, dtype, attn_implementation: str | None):
    """-> (model, tokenizer, feature extractor) from a local directory or the hub cache; actionable errors."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    local = Path(model).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        features = WhisperFeatureExtractor.from_pretrained(model)
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        whisper = WhisperForConditionalGeneration.from_pretrained(model, dtype=dtype, **kw)
    except (OSError, ValueError) as exc:  # hub errors (offline, not cached, 404) subclass OSError
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        if isinstance(exc, ValueError) and any(word in first.lower() for word in ("attn", "attention", "flash")):
            raise ConfigValueError(f"asr.attn_implementation={attn_implementation!r} is not usable here: "
                                   f"{first}") from exc
        if local:  # an empty or foreign directory: transformers raises OSError or ValueError
            raise MissingWeightsError(f"asr.model={model}: could not load a transformers Whisper model from that "
                                      f"directory ({type(exc).__name__}: {first})") from exc
        if isinstance(exc, ValueError):
            raise
        from huggingface_hub.constants import HF_HUB_CACHE

        raise MissingWeightsError(
            f"asr.model={model}: weights for hub repo '{model}' are not in the Hugging Face cache ({HF_HUB_CACHE}) "
            f"and could not be downloaded ({type(exc).__name__}). Run `hf download {model}` on a connected machine "
            "and copy the cache, or set asr.model to a local directory") from exc
    return whisper, tokenizer, features


class HFWhisperRecognizer:
    """Whisper through transformers behind the SpeechRecognizer protocol (see the module docstring)."""

    def __init__(self, model: str, device: str = "auto", dtype: str = HFWhisperConfig.dtype, bf16: bool = True,
                 attn_implementation: str | None = "sdpa", beam_size: int = HFWhisperConfig.beam_size,
                 language: str = HFWhisperConfig.language, max_new_tokens: int = HFWhisperConfig.max_new_tokens,
                 random_weights: bool = False, sample_rate: int = 16000, *, _model: Any = None) -> None:
        if sample_rate != 16000:
            raise ConfigValueError(f"asr.sample_rate={sample_rate}: Whisper takes 16000 Hz audio")
        if beam_size < 1:
            raise ConfigValueError(f"asr.beam_size must be >= 1, got {beam_size}")
        from fern.devices import resolve_torch_device, resolve_torch_dtype

        self.sample_rate = sample_rate
        self.device = resolve_torch_device(device)
        self.dtype = resolve_torch_dtype(dtype, self.device, "asr.dtype", half=bf16)
        if _model is not None:  # (model, tokenizer, feature extractor) built in code: tests
            whisper, self.tokenizer, self.features = _model
        elif random_weights:
            from transformers import WhisperFeatureExtractor

            size = size_of(model)
            whisper = random_whisper(size, self.device, self.dtype, attn_implementation)
            self.tokenizer = code_tokenizer(size)
            self.features = WhisperFeatureExtractor(feature_size=whisper.config.num_mel_bins)
        else:
            whisper, self.tokenizer, self.features = load_whisper(model, self.dtype, attn_implementation)
        self.model = whisper.to(self.device).eval()
        self.prompt = self._prompt_ids(language)
        room = self.model.config.max_target_positions - len(self.prompt)
        if not 1 <= max_new_tokens <= room:
            raise ConfigValueError(f"asr.max_new_tokens must be between 1 and {room}, got {max_new_tokens}")
        self.generation = self._generation_config(beam_size, max_new_tokens)

    def _token(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or (tid == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise ConfigValueError(f"asr: the Whisper tokenizer has no {token} token")
        return int(tid)

    def _prompt_ids(self, language: str) -> list[int]:
        multilingual = self.model.config.vocab_size >= 51865  # how Whisper itself tells the two vocabularies apart
        if not multilingual:
            if language != "en":
                raise ConfigValueError(f"asr.language={language!r}: this is an English-only Whisper; use en")
            return [self._token(SOT), self._token(NO_TIMESTAMPS)]
        try:
            lang = self._token(f"<|{language}|>")
        except ConfigValueError:
            raise ConfigValueError(f"asr.language={language!r} is not a Whisper language code (e.g. en, de, fr)"
                                   ) from None
        return [self._token(SOT), lang, self._token("<|transcribe|>"), self._token(NO_TIMESTAMPS)]

    def _generation_config(self, beam_size: int, max_new_tokens: int):
        from transformers import GenerationConfig

        eot = self._token(EOT)
        first_timestamp = self._token(NO_TIMESTAMPS) + 1
        own = getattr(self.model, "generation_config", None)
        suppress = set(getattr(own, "suppress_tokens", None) or [])
        suppress.update(range(first_timestamp, self.model.config.vocab_size))  # text only, no timestamps
        return GenerationConfig(
            max_new_tokens=int(max_new_tokens), num_beams=int(beam_size), do_sample=False,
            decoder_start_token_id=self.prompt[0], eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
            suppress_tokens=sorted(suppress),
            begin_suppress_tokens=list(getattr(own, "begin_suppress_tokens", None) or [eot]),
        )

    def transcribe(self, audio: np.ndarray) -> str:
        if audio.size == 0:
            return ""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        window = int(self.features.n_samples)
        texts = [self._window(audio[start:start + window]) for start in range(0, audio.size, window)]
        return " ".join(t for t in texts if t).strip()

    def _window(self, audio: np.ndarray) -> str:
        import torch
        from transformers.generation.utils import GenerationMixin

        feats = self.features(audio, sampling_rate=self.sample_rate, return_tensors="pt",
                              device=self.device).input_features
        feats = feats.to(self.device, self.dtype)
        prompt = torch.tensor([self.prompt], device=self.device)
        with torch.inference_mode():
            # the generic generate on purpose: Whisper's own override differs between transformers 4.x and 5.x
            out = GenerationMixin.generate(self.model, input_features=feats, decoder_input_ids=prompt,
                                           generation_config=self.generation)
        ids = out[0, len(self.prompt):].tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
