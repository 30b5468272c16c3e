"""Structured-config schemas: Hydra merges each YAML preset onto one of these, so a typo'd key, a wrong type or a
missing required value fails at compose time, before any model loads.

Each preset file names its schema in its defaults list (``- /schema/<group>/<name>@_here_``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


# ---- io ---------------------------------------------------------------------------------------------------------
@dataclass
class WavFileSourceConfig:
    _target_: str = "fern.io.file.WavFileSource"
    path: str = MISSING
    sample_rate: int = 16000
    block_ms: int = 20
    trailing_silence_s: float = 1.5


@dataclass
class TimelineSinkConfig:
    _target_: str = "fern.io.file.TimelineSink"
    sample_rate: int = 24000


@dataclass
class FileIOConfig:
    input: str = MISSING
    output_dir: Optional[str] = None  # null: the Hydra run directory
    source: WavFileSourceConfig = field(default_factory=WavFileSourceConfig)
    sink: TimelineSinkConfig = field(default_factory=TimelineSinkConfig)


# ---- vad / turn -------------------------------------------------------------------------------------------------
@dataclass
class WebRtcVadConfig:
    _target_: str = "fern.vad.webrtc.WebRtcVad"
    aggressiveness: int = 2
    frame_ms: int = 20
    sample_rate: int = 16000


@dataclass
class SilenceTurnConfig:
    _target_: str = "fern.turn.silence.SilenceEndpointer"
    silence_ms: int = 700
    min_speech_ms: int = 200
    speech_start_ms: int = 60


# ---- asr --------------------------------------------------------------------------------------------------------
@dataclass
class FasterWhisperConfig:
    _target_: str = "fern.asr.faster_whisper.FasterWhisperRecognizer"
    model: str = MISSING  # a faster-whisper size name, a hub repo id, a local dir, or package:<module>/<subdir>
    device: str = "${device}"
    compute_type: str = "default"
    beam_size: int = 1
    language: Optional[str] = "en"
    cpu_threads: int = 0
    sample_rate: int = 16000


# ---- chunker / tts ----------------------------------------------------------------------------------------------
@dataclass
class ClauseChunkerConfig:
    _target_: str = "fern.chunker.clause.ClauseChunker"
    first_min_words: int = 3
    min_words: int = 6
    max_words: int = 30


@dataclass
class EspeakConfig:
    _target_: str = "fern.tts.espeak.EspeakSynthesizer"
    voice: str = "en-us"
    words_per_minute: int = 175
    chunk_ms: int = 200


# ---- optim / tracking / dialogue --------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    """Speed flags; fern.optim.apply_optim applies the global ones and logs each."""

    name: str = MISSING
    tf32: bool = False
    cudnn_benchmark: bool = False
    attn_implementation: str = "eager"  # eager | sdpa | flash_attention_2
    static_cache: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    bf16: bool = False
    tts_weights: str = "bf16"  # CSM depth decoder: bf16 (the model's own) | int8 | fp8 weight-only, per-channel scales


@dataclass
class TrackingConfig:
    enabled: bool = True
    tracking_uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else sqlite under tracking/
    experiment: str = "fern"
    run_name: Optional[str] = None


@dataclass
class DialogueConfig:
    # Plain and short on purpose: small local models (SmolLM2-135M) ramble or switch language under longer personas.
    system_prompt: str = "You are FERN, a helpful voice assistant. Keep answers short."
    history_max_tokens: int = 1024


@dataclass
class RunConfig:
    io: Any = MISSING
    vad: Any = MISSING
    turn: Any = MISSING
    asr: Any = MISSING
    llm: Any = MISSING
    chunker: Any = MISSING
    tts: Any = MISSING
    optim: OptimConfig = MISSING
    tracking: TrackingConfig = MISSING
    dialogue: DialogueConfig = field(default_factory=DialogueConfig)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    warmup: bool = True  # run each model once before the session so the first turn's latency is not start-up time
    round_trip_eval: bool = True  # after the session, transcribe each spoken reply and log its WER vs the reply text


SCHEMAS: dict[str, dict[str, type]] = {
    "io": {"file": FileIOConfig},
    "vad": {"webrtc": WebRtcVadConfig},
    "turn": {"silence": SilenceTurnConfig},
    "asr": {"faster_whisper": FasterWhisperConfig},
    "chunker": {"clause": ClauseChunkerConfig},
    "tts": {"espeak": EspeakConfig},
    "optim": {"optim": OptimConfig},
    "tracking": {"tracking": TrackingConfig},
}
