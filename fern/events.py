"""Typed events: what the stages hand along, and what observers see.

    source --blocks--> Listener --SpeechStarted, TurnLikelyOver, SpeechResumed, UserTurn--> Responder --Transcript,
    LlmToken, LlmDone, Clause, AgentAudio, ClauseSpoken, StageStats, ReplyEnded--> observers (record, console,
    outputs, MLflow)

Every event carries ``t``: seconds on the session clock (fern.clock.SessionClock) when it happened. ``turn_id`` ties
everything the agent does to the user turn it answers; a reply is cancelled (barge-in, a resumed turn) by turn.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import numpy as np


# ---- the listener -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechStarted:
    """The user started talking (after the detector's debounce). During agent playback this is a barge-in cue."""

    t: float
    t_speech_start: float


@dataclass(frozen=True)
class SpeechResumed:
    """The user went on after a pause: whatever was prepared for that pause is void."""

    t: float
    pause_s: float


@dataclass(frozen=True)
class UserTurn:
    t: float  # when the end of turn was declared (for TurnLikelyOver: when it was judged likely)
    turn_id: int
    audio: np.ndarray
    sample_rate: int
    t_speech_start: float
    t_last_voiced: float  # end of the last voiced frame: the reference for endpoint and voice-to-voice delay
    # recognition of this audio started during the pause (by the listener, for its turn detector): resolves to a
    # Transcript, so the reply need not run the ASR again
    transcript: asyncio.Future | None = None


@dataclass(frozen=True)
class TurnLikelyOver:
    """The turn detector thinks the pause ends the turn but is not sure yet: a reply may be prepared, not played."""

    t: float
    turn: UserTurn


# ---- the responder ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transcript:
    t: float
    turn_id: int
    text: str
    t_start: float  # when recognition started
    asr_logprob: float = float("nan")  # the recogniser's mean log-probability per token (nan: it does not say)


@dataclass(frozen=True)
class LlmToken:
    t: float
    turn_id: int
    text: str


@dataclass
class StreamInfo:
    """What one LLM stream reports when it ends (the value its generator returns)."""

    backend: str  # the model that produced the reply (a fallback shows here)
    n_tokens: int = 0
    prompt_tokens: int | None = None
    reused_tokens: int | None = None  # prompt tokens whose KV cache was reused from the previous turn
    ttft_s: float | None = None
    decode_s: float = 0.0
    fallback: bool = False
    fallback_reason: str | None = None
    error: str | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class LlmDone:
    t: float
    turn_id: int
    text: str
    info: StreamInfo


@dataclass(frozen=True)
class Clause:
    t: float
    turn_id: int
    index: int
    text: str


@dataclass(frozen=True)
class AgentAudio:
    t: float  # when the TTS produced it
    turn_id: int
    clause_index: int
    samples: np.ndarray  # float32 mono
    sample_rate: int
    heard_at: float  # when its first sample reaches the listener's ear (the sink's answer to play())


@dataclass(frozen=True)
class ClauseSpoken:
    t: float
    turn_id: int
    index: int
    compute_s: float  # TTS time spent on this clause


@dataclass(frozen=True)
class StageStats:
    """Figures a stage computes about itself (e.g. CSM's first-chunk time), returned when its stream ends."""

    t: float
    turn_id: int
    stage: str
    values: dict[str, float]


@dataclass(frozen=True)
class ReplyEnded:
    t: float
    turn_id: int
    agent_text: str  # what the user heard (an interrupted reply: cut at the word)
    llm_text: str  # everything the LLM wrote (longer than agent_text when the reply was cut)
    error: str | None = None  # "interrupted", "no speech recognised", or the failure
    t_silent: float | None = None  # an interrupted reply: when the speaker actually fell silent


@dataclass(frozen=True)
class BargeIn:
    """The user talked over the agent long enough to interrupt it."""

    t: float
    turn_id: int  # the reply that is cut
    t_speech_start: float  # when the user started talking


@dataclass
class CancelToken:
    """Cooperative cancellation for blocking generators (LLM tokens, TTS frames) running in worker threads."""

    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


Event = (SpeechStarted | SpeechResumed | TurnLikelyOver | UserTurn | Transcript | LlmToken | LlmDone | Clause
         | AgentAudio | ClauseSpoken | StageStats | ReplyEnded | BargeIn)
