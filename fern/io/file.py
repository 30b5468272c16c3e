"""File-backed audio I/O: a WAV replayed as a microphone, and a timeline sink standing in for the speaker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from omegaconf import MISSING

from fern.audio import read_wav
from fern.errors import ConfigValueError
from fern.io.track import Track as _Track


@dataclass
class WavFileSourceConfig:
    _target_: str = "fern.io.file.WavFileSource"
    path: str = "${..input}"
    sample_rate: int = 16000
    block_ms: int = 20
    trailing_silence_s: float = 1.5  # appended so the endpointer can close the last turn


@dataclass
class TimelineSinkConfig:
    _target_: str = "fern.io.file.TimelineSink"
    sample_rate: int = 24000


@dataclass
class FileIOConfig:
    input: str = MISSING  # the WAV replayed as the microphone (any rate, any channel count)
    output_dir: Optional[str] = None  # null: the Hydra run directory
    source: WavFileSourceConfig = field(default_factory=WavFileSourceConfig)
    sink: TimelineSinkConfig = field(default_factory=TimelineSinkConfig)


SCHEMAS = {"io": {"file": FileIOConfig}}


class WavFileSource:
    """Plays a WAV file as if it were a microphone: fixed-size blocks, paced in real time.

    Real-time pacing is what makes latency figures from a replay mean what they would mean live (the pipeline stamps
    blocks on arrival, like a microphone's); ``realtime=False`` is only for reading the blocks themselves, not for
    driving a pipeline. Trailing silence is appended so the endpointer can close the last turn.
    """

    def __init__(self, path: str, sample_rate: int = WavFileSourceConfig.sample_rate,
                 block_ms: int = WavFileSourceConfig.block_ms, realtime: bool = True,
                 trailing_silence_s: float = WavFileSourceConfig.trailing_silence_s) -> None:
        if block_ms <= 0 or (sample_rate * block_ms) % 1000:
            raise ConfigValueError(f"io.source.block_ms={block_ms} must be a positive whole number of samples "
                                   f"at {sample_rate} Hz")
        self.path = path
        self.sample_rate = sample_rate
        self.block_ms = block_ms
        self.realtime = realtime
        audio = read_wav(path, sample_rate)  # validates now, before any model loads
        self.audio = np.concatenate([audio, np.zeros(int(trailing_silence_s * sample_rate), np.float32)])
        self._closed = threading.Event()

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate

    def blocks(self) -> Iterator[np.ndarray]:
        block = self.sample_rate * self.block_ms // 1000
        start = time.perf_counter()
        for i in range(0, self.audio.size - block + 1, block):
            if self._closed.is_set():
                return
            if self.realtime:
                # a microphone delivers a block once its last sample has been captured
                delay = start + (i + block) / self.sample_rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            yield self.audio[i:i + block]

    def close(self) -> None:
        self._closed.set()


class TimelineSink:
    """A speaker simulated on the session clock: agent audio plays in order, never overlapping itself, and both
    sides are kept on one time axis so a replay can be listened to (and analysed) as it happened."""

    def __init__(self, sample_rate: int = TimelineSinkConfig.sample_rate) -> None:
        self.sample_rate = sample_rate
        self._tracks = {"user": _Track(), "agent": _Track()}
        self._agent_free_at = 0.0  # session time at which the speaker finishes what it was given
        self._lock = threading.Lock()

    def record_user(self, samples: np.ndarray, sample_rate: int, t_end: float) -> None:
        with self._lock:
            self._tracks["user"].mix(samples, sample_rate, t_end - samples.size / sample_rate)

    def play(self, samples: np.ndarray, sample_rate: int, t: float) -> float:
        with self._lock:
            t_start = max(t, self._agent_free_at)
            self._tracks["agent"].mix(samples, sample_rate, t_start)
            self._agent_free_at = t_start + samples.size / sample_rate
            return t_start

    def stop(self, t: float) -> float:
        with self._lock:
            silent = min(t, self._agent_free_at)  # playback may have ended before t
            self._tracks["agent"].truncate(t)
            self._agent_free_at = silent
        return silent

    def track(self, name: str) -> np.ndarray:
        """One side alone ("user" or "agent") at the sink's rate, on the same time axis as the timeline."""
        with self._lock:
            return self._tracks[name].audio(self.sample_rate)

    def timeline(self) -> np.ndarray:
        """Both sides mixed, as an observer in the room would have heard them."""
        user, agent = self.track("user"), self.track("agent")
        mixed = np.zeros(max(user.size, agent.size), np.float32)
        mixed[:user.size] += user
        mixed[:agent.size] += agent
        return np.clip(mixed, -1.0, 1.0)

    def close(self) -> None:
        pass
