"""The contract of each stage. A config group's ``_target_`` builds an object that satisfies one of these.

Stages are plain synchronous classes so they are easy to test and to reuse in benchmarks; fern.pipeline runs them
concurrently. Anything that streams takes a CancelToken and must stop at its next step once it is cancelled; a stream
may *return* a summary when it ends (an LLM its StreamInfo, a synthesizer a dict of its own figures).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from fern.events import CancelToken, Event, StreamInfo
from fern.turn.base import TurnDetector

__all__ = ["AudioSink", "AudioSource", "ChatHistory", "Chunker", "LanguageModel", "Observer", "PlayedAudio",
           "RecordingSink", "ReportsPlayback", "SharesSessionClock", "SpeechRecognizer", "SpeechSynthesizer",
           "TimedAudioSource", "TurnDetector", "VoiceActivityDetector"]


@runtime_checkable
class AudioSource(Protocol):
    """Yields mono float32 blocks of ``block_ms`` at ``sample_rate``, paced like a microphone when realtime."""

    sample_rate: int
    block_ms: int

    def blocks(self) -> Generator[np.ndarray, None, None]: ...

    def close(self) -> None: ...


@runtime_checkable
class AudioSink(Protocol):
    """Plays agent audio. ``play`` returns the session time at which the first sample is (or will be) heard."""

    sample_rate: int

    def play(self, samples: np.ndarray, sample_rate: int, t: float) -> float: ...

    def stop(self, t: float) -> float:
        """Drop agent audio not yet heard at session time ``t`` (an interrupted reply); returns the session time
        playback actually fell silent (a real device drains what it already holds)."""
        ...

    def close(self) -> None: ...


class PlayedAudio(Protocol):
    """One piece of agent audio as a real device played it (measured as the device takes it, not predicted)."""

    sample_rate: int
    heard_at: float  # predicted at play(): when its first sample will be heard

    @property
    def done(self) -> bool:
        """Fully played, or cut by stop(): nothing more of it will be heard."""
        ...

    @property
    def heard_until(self) -> float:
        """Session time its last played sample is heard."""
        ...

    @property
    def played_samples(self) -> int:
        """Samples of it the device has taken (final once done)."""
        ...


@runtime_checkable
class ReportsPlayback(Protocol):
    """A sink that says what the device really played (io=live): after an underrun the speaker plays the rest later
    than predicted at play(), so what the user heard is taken from these chunks, not from the predicted times."""

    def play_chunk(self, samples: np.ndarray, sample_rate: int) -> PlayedAudio: ...


@runtime_checkable
class RecordingSink(AudioSink, Protocol):
    """A sink that also keeps both sides of the conversation on the session clock (timeline.wav, round-trip WER)."""

    def record_user(self, samples: np.ndarray, sample_rate: int, t_end: float) -> None: ...

    def track(self, name: str) -> np.ndarray:
        """One side alone ("user" or "agent") at the sink's rate, on the session time axis."""
        ...

    def timeline(self) -> np.ndarray: ...


@runtime_checkable
class TimedAudioSource(AudioSource, Protocol):
    """A source that knows when each block was captured (a real microphone), better than its arrival time."""

    def timed_blocks(self) -> Generator[tuple[float, np.ndarray], None, None]: ...


@runtime_checkable
class SharesSessionClock(Protocol):
    """A device that reports times (heard-at, captured-at) and must report them on the pipeline's session clock."""

    def use_clock(self, clock: object) -> None: ...


@runtime_checkable
class VoiceActivityDetector(Protocol):
    sample_rate: int
    frame_ms: int

    def is_speech(self, frame: np.ndarray) -> bool: ...


@runtime_checkable
class SpeechRecognizer(Protocol):
    sample_rate: int

    def transcribe(self, audio: np.ndarray) -> str: ...


@runtime_checkable
class ScoredRecognizer(Protocol):
    """A recogniser that also says how sure it is: (text, mean log-probability per token). Whisper finishes sentence
    fragments it hears, but less surely, which makes this a strong end-of-turn cue (fern.turn.semantic)."""

    def transcribe_scored(self, audio: np.ndarray) -> tuple[str, float]: ...


@runtime_checkable
class LanguageModel(Protocol):
    """Streams reply text pieces for a chat history of {"role", "content"} messages; returns its StreamInfo."""

    name: str

    def stream(self, messages: Sequence[dict[str, str]], cancel: CancelToken) -> Generator[str, None, StreamInfo]: ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` costs this model (the chat history's budget is kept in these)."""
        ...


@runtime_checkable
class ChatHistory(Protocol):
    def add_user(self, text: str) -> None: ...

    def add_assistant(self, text: str) -> None:
        """What the agent said: after an interruption, only the part the user heard."""
        ...

    def messages(self) -> list[dict[str, str]]: ...


@runtime_checkable
class Chunker(Protocol):
    """Turns a token stream into speakable clauses."""

    def push(self, text: str) -> list[str]: ...

    def flush(self) -> list[str]: ...


@runtime_checkable
class SpeechSynthesizer(Protocol):
    """Streams float32 mono audio chunks at ``sample_rate`` for one piece of text; may return its own figures."""

    sample_rate: int

    def stream(self, text: str, cancel: CancelToken) -> Generator[np.ndarray, None, dict[str, float] | None]: ...


@runtime_checkable
class Observer(Protocol):
    """Sees every event of a session, in order, on the event loop (so it must be quick: no model calls)."""

    def on_event(self, event: Event) -> None: ...

    def close(self) -> None:
        """The session is over (normally or not): write out what is kept."""
        ...
