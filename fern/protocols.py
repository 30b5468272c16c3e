"""The contract of each stage. A config group's ``_target_`` builds an object that satisfies one of these.

Stages are plain synchronous classes so they are easy to test and to reuse in benchmarks; fern.pipeline runs them
concurrently. Anything that streams takes a CancelToken and must stop at its next step once it is cancelled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from fern.events import CancelToken


@runtime_checkable
class AudioSource(Protocol):
    """Yields mono float32 blocks of ``block_ms`` at ``sample_rate``, paced like a microphone when realtime."""

    sample_rate: int
    block_ms: int

    def blocks(self) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class AudioSink(Protocol):
    """Receives user audio (for the timeline) and agent audio to be played at session time ``t``.

    ``play`` returns the session time at which the first sample is (or will be) heard.
    """

    sample_rate: int

    def record_user(self, samples: np.ndarray, sample_rate: int, t_end: float) -> None: ...

    def play(self, samples: np.ndarray, sample_rate: int, t: float) -> float: ...

    def stop(self, t: float) -> None:
        """Drop agent audio that would be heard after session time ``t`` (an interrupted reply)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class VoiceActivityDetector(Protocol):
    sample_rate: int
    frame_ms: int

    def is_speech(self, frame: np.ndarray) -> bool: ...


@runtime_checkable
class TurnDetector(Protocol):
    """Consumes VAD decisions and returns (start, last_voiced, end) session times when a user turn ends."""

    def push(self, t_frame_end: float, frame_s: float, is_speech: bool) -> tuple[float, float, float] | None: ...

    def reset(self) -> None: ...


@runtime_checkable
class SpeechRecognizer(Protocol):
    sample_rate: int

    def transcribe(self, audio: np.ndarray) -> str: ...


@runtime_checkable
class LanguageModel(Protocol):
    """Streams reply text pieces for a chat history of {"role", "content"} messages."""

    name: str

    def stream(self, messages: Sequence[dict[str, str]], cancel: CancelToken) -> Iterator[str]: ...


@runtime_checkable
class Chunker(Protocol):
    """Turns a token stream into speakable clauses."""

    def push(self, text: str) -> list[str]: ...

    def flush(self) -> list[str]: ...


@runtime_checkable
class SpeechSynthesizer(Protocol):
    """Streams float32 mono audio chunks at ``sample_rate`` for one piece of text."""

    sample_rate: int

    def stream(self, text: str, cancel: CancelToken) -> Iterator[np.ndarray]: ...
