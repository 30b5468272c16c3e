"""Scripted stages with controllable timing, for pipeline behaviour tests that run in milliseconds, not minutes.

They satisfy the same protocols as the real stages and behave like them where the pipeline can tell (streams that
check their CancelToken every step, a synthesizer that takes compute time per chunk), so ordering, overlap,
cancellation and failure handling are tested on the real orchestration code; what they do not do is understand
speech. The real models are tested in their own modules (pytest -m models).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from fern.events import CancelToken, Event, StreamInfo
from fern.llm.history import approx_token_count
from fern.turn.base import PauseState, Verdict


def tone(seconds: float, sample_rate: int = 16000, freq: float = 220.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def tone_conversation(parts: Sequence[tuple[str, float]], sample_rate: int = 16000) -> np.ndarray:
    """("speech" | "silence", seconds) pieces -> audio: tones stand in for speech for the EnergyVad."""
    return np.concatenate([tone(s, sample_rate) if kind == "speech" else np.zeros(int(s * sample_rate), np.float32)
                           for kind, s in parts])


class ArraySource:
    """An array played as a microphone, paced in real time (the pipeline stamps blocks on arrival)."""

    def __init__(self, audio: np.ndarray, sample_rate: int = 16000, block_ms: int = 20) -> None:
        self.audio, self.sample_rate, self.block_ms = audio.astype(np.float32), sample_rate, block_ms
        self._closed = False

    def blocks(self) -> Iterator[np.ndarray]:
        block = self.sample_rate * self.block_ms // 1000
        start = time.perf_counter()
        for i in range(0, self.audio.size - block + 1, block):
            if self._closed:
                return
            delay = start + (i + block) / self.sample_rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            yield self.audio[i:i + block]

    def close(self) -> None:
        self._closed = True


class EnergyVad:
    """Speech = frame RMS over a threshold: exact on tones and silence, which is all the scripted tests feed it."""

    def __init__(self, sample_rate: int = 16000, frame_ms: int = 20, threshold: float = 0.01) -> None:
        self.sample_rate, self.frame_ms, self.threshold = sample_rate, frame_ms, threshold

    def is_speech(self, frame: np.ndarray) -> bool:
        return float(np.sqrt(np.mean(frame ** 2))) > self.threshold


@dataclass
class ScriptedTurnDetector:
    """Judges a pause by ``verdicts`` (called with the PauseState: True/False to end or not, or a whole Verdict);
    records what it was asked."""

    checkpoints_s: tuple[float, ...] = (0.2, 1.0)
    verdicts: Callable[[PauseState], bool | Verdict] = lambda state: True
    decide_s: float = 0.0  # compute time per decision
    speech_start_ms: int = 40
    min_speech_ms: int = 100
    needs_transcript: bool = False
    asked: list[PauseState] = field(default_factory=list)

    def decide(self, state: PauseState) -> Verdict:
        self.asked.append(state)
        time.sleep(self.decide_s)
        verdict = self.verdicts(state)
        return verdict if isinstance(verdict, Verdict) else Verdict(end=verdict)


class ScriptedASR:
    sample_rate = 16000

    def __init__(self, texts: Sequence[str], delay_s: float = 0.05, logprob: float = float("nan")) -> None:
        self.texts, self.delay_s, self.calls, self.logprob = list(texts), delay_s, 0, logprob

    def transcribe(self, audio: np.ndarray) -> str:
        time.sleep(self.delay_s)
        text = self.texts[min(self.calls, len(self.texts) - 1)]
        self.calls += 1
        return text

    def transcribe_scored(self, audio: np.ndarray) -> tuple[str, float]:
        return self.transcribe(audio), self.logprob


class ScriptedLLM:
    """Streams each reply word by word: ``ttft_s`` before the first word, ``token_s`` per word after it.
    ``fail_at`` (reply index, word index) raises there, as a crashing model would."""

    def __init__(self, replies: Sequence[str], ttft_s: float = 0.05, token_s: float = 0.02, name: str = "scripted",
                 fail_at: tuple[int, int] | None = None) -> None:
        self.replies, self.ttft_s, self.token_s, self.name, self.fail_at = list(replies), ttft_s, token_s, name, fail_at
        self.calls: list[list[dict[str, str]]] = []
        self.streamed: list[int] = []  # words each call streamed before it ended (or was stopped)

    def count_tokens(self, text: str) -> int:
        return approx_token_count(text)

    def stream(self, messages: Sequence[dict[str, str]], cancel: CancelToken) -> Generator[str, None, StreamInfo]:
        index = len(self.calls)
        self.calls.append([dict(m) for m in messages])
        self.streamed.append(0)
        words = self.replies[min(index, len(self.replies) - 1)].split(" ")
        info = StreamInfo(backend=self.name, prompt_tokens=sum(self.count_tokens(m["content"]) for m in messages))
        time.sleep(self.ttft_s)
        for i, word in enumerate(words):
            if self.fail_at == (index, i):
                raise RuntimeError(f"{self.name} failed (scripted)")
            if i:
                time.sleep(self.token_s)
            info.n_tokens += 1
            self.streamed[index] += 1
            yield word if i == 0 else " " + word
            if cancel.cancelled:
                info.cancelled = True
                return info
        return info


class ScriptedTTS:
    """``seconds_per_word`` of a tone per clause, in ``chunk_s`` chunks, each taking ``rtf`` x its duration to make."""

    def __init__(self, sample_rate: int = 16000, seconds_per_word: float = 0.25, chunk_s: float = 0.1,
                 rtf: float = 0.1, fail_on: str | None = None) -> None:
        self.sample_rate, self.seconds_per_word, self.chunk_s, self.rtf = sample_rate, seconds_per_word, chunk_s, rtf
        self.fail_on = fail_on
        self.spoken: list[str] = []

    def stream(self, text: str, cancel: CancelToken) -> Generator[np.ndarray, None, dict[str, float]]:
        if self.fail_on is not None and self.fail_on in text:
            raise RuntimeError("synthesizer failed (scripted)")
        self.spoken.append(text)
        audio = tone(max(1, len(text.split())) * self.seconds_per_word, self.sample_rate, freq=440.0)
        step = int(self.chunk_s * self.sample_rate)
        t0 = time.perf_counter()
        first = None
        for i in range(0, audio.size, step):
            if cancel.cancelled:
                break
            chunk = audio[i:i + step]
            time.sleep(self.rtf * chunk.size / self.sample_rate)
            first = first if first is not None else time.perf_counter() - t0
            yield chunk
        return {"first_chunk_s": first or 0.0}


class EventLog:
    """An observer that keeps every event: the timeline harness's record of what happened, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed = True

    def of(self, kind: type, turn_id: int | None = None) -> list:
        return [e for e in self.events if isinstance(e, kind)
                and (turn_id is None or getattr(e, "turn_id", None) == turn_id)]

    def kinds(self, turn_id: int) -> list[str]:
        """Event type names of one turn, consecutive repeats collapsed (Clause, AgentAudio, ... interleave)."""
        names: list[str] = []
        for e in self.events:
            if getattr(e, "turn_id", None) == turn_id and (not names or names[-1] != type(e).__name__):
                names.append(type(e).__name__)
        return names
