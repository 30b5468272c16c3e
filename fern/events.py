"""Typed events that flow one way through the pipeline.

source -> AudioFrame -> vad -> VadFrame -> turn -> UserTurn -> asr -> Transcript -> llm -> LlmToken/LlmDone
-> chunker -> Clause -> tts -> AgentAudio -> sink.

Every event carries ``t``: seconds on the session clock (fern.clock.SessionClock) when it was produced; audio frames
carry the time their last sample was captured. ``turn_id`` ties everything an agent does to the user turn it answers,
which is what barge-in will cancel by.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AudioFrame:
    t: float
    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    index: int


@dataclass(frozen=True)
class VadFrame:
    t: float
    frame: AudioFrame
    is_speech: bool


@dataclass(frozen=True)
class UserTurn:
    t: float  # when the end of turn was declared
    turn_id: int
    audio: np.ndarray
    sample_rate: int
    t_speech_start: float
    t_last_voiced: float  # end of the last voiced frame: the reference for endpoint and voice-to-voice delay


@dataclass(frozen=True)
class Transcript:
    t: float
    turn_id: int
    text: str
    t_start: float  # when recognition started


@dataclass(frozen=True)
class LlmToken:
    t: float
    turn_id: int
    text: str


@dataclass(frozen=True)
class LlmDone:
    t: float
    turn_id: int
    text: str
    n_tokens: int
    backend: str  # which model produced the reply (a fallback shows here)
    fallbacks: int = 0


@dataclass(frozen=True)
class Clause:
    t: float
    turn_id: int
    index: int
    text: str
    final: bool = False


@dataclass(frozen=True)
class AgentAudio:
    t: float
    turn_id: int
    clause_index: int
    samples: np.ndarray  # float32 mono
    sample_rate: int


@dataclass
class CancelToken:
    """Cooperative cancellation for blocking generators (LLM tokens, TTS frames) running in worker threads."""

    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
