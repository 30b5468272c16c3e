"""The root schema of run.py and the sections that belong to no stage (optim, tracking, dialogue, listener).

Stage schemas live beside their stages (each module's ``SCHEMAS``; see fern.config). Hydra merges every YAML preset
onto its schema, so a typo'd key, a wrong type or a missing required value fails at compose time, before any model
loads. Presets name their schema in their defaults list (``- /schema/<group>/<name>@_here_``) and state only what
differs from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING


class TTSWeights(str, Enum):
    """CSM depth-decoder weights (fern.tts.csm.fused.WEIGHT_KINDS): the model's own, or weight-only int8 / fp8."""

    bf16 = "bf16"
    int8 = "int8"
    fp8 = "fp8"

    def __str__(self) -> str:  # as written in the config, in logs, params and sweep directory names
        return self.value


class TTSKernels(str, Enum):
    """CSM kernels (fern.tts.csm.engine.KERNELS), for the depth decoder and the backbone alike."""

    torch = "torch"
    triton = "triton"
    persistent = "persistent"
    auto = "auto"

    def __str__(self) -> str:
        return self.value


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
    tts_weights: TTSWeights = TTSWeights.bf16  # CSM depth decoder: the model's own, or int8 | fp8, per-channel scales
    # CSM kernels of the depth decoder and the backbone (tts.kernels, tts.backbone_kernels): torch | triton |
    # persistent | auto (persistent on CUDA where Triton runs, else torch)
    tts_kernels: TTSKernels = TTSKernels.torch


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


class ReplyWords(str, Enum):
    """Where the reply's words come from (fern.listener.REPLY_WORDS)."""

    asr = "asr"
    detector = "detector"

    def __str__(self) -> str:  # as written in the config ("detector"), in logs, params and sweep directory names
        return self.value


@dataclass
class ListenerConfig:
    preroll_ms: int = 300  # audio kept before the detected speech start (VAD onsets are late by a frame or two)
    postroll_ms: int = 300  # audio kept after the last voiced frame (word endings the VAD calls silence)
    max_turn_s: float = 300.0  # the longest turn kept whole
    # the models (turn detector, ASR) hear a pause the user spoke after shortened to this: Whisper often stops
    # reading at a long silence inside a turn
    inner_pause_ms: int = 300
    # the reply's words: "asr" (the reply's recogniser, started once the pause's first verdict is in) or "detector"
    # (a turn detector that reads the words itself, turn=semantic: its reading, no second recognition; README
    # "Turn-taking" gives the trade)
    reply_words: ReplyWords = ReplyWords.asr
    workers: int = 4  # threads for blocking work: capture, turn decisions, ASR/LLM, TTS


@dataclass
class BargeInConfig:
    enabled: bool = True  # the user talking over the agent stops it (the reply is cut at the word they heard)
    min_speech_ms: int = 200  # shorter speech (a cough, "mm-hm") does not interrupt
    # before interrupting, recognise the speech and ignore it when it is the agent's own words coming back (echo that
    # the canceller missed); costs one ASR call of the overlap, so the stop comes that much later
    self_speech_guard: bool = False


@dataclass
class TuneConfig:
    """Read by ``python -m fern.tune`` only (turn-detector tuning composes run.py's config)."""

    # asterisk: the training split of fern.bench.turns' labelled real-speech set (built once, ~5 min);
    # espeak: a six-turn espeak-ng set built in seconds (smoke runs, tests)
    turn_set: str = "asterisk"


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
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    barge_in: BargeInConfig = field(default_factory=BargeInConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    warmup: bool = True  # run each model once before the session so the first turn's latency is not start-up time
    round_trip_eval: bool = True  # after the session, transcribe each spoken reply and log its WER vs the reply text


SCHEMAS: dict[str, dict[str, type]] = {"optim": {"optim": OptimConfig}, "tracking": {"tracking": TrackingConfig}}
