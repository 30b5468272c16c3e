"""Audio on the session clock: what the timeline WAV is made of (shared by the file and the live sinks)."""

from __future__ import annotations

import numpy as np

from fern.audio import resample


class Track:
    """Audio on the session clock at one sample rate, in a buffer that doubles when it fills (appending 20 ms blocks
    to a growing array would cost O(session length) per block)."""

    def __init__(self, sample_rate: int | None = None) -> None:
        self.sample_rate = sample_rate
        self._buffer = np.zeros(0, np.float32)
        self.length = 0

    def mix(self, samples: np.ndarray, sample_rate: int, t_start: float) -> None:
        if self.sample_rate is None:
            self.sample_rate = sample_rate  # keep the producer's rate: resampling 20 ms pieces leaves seams
        audio = resample(samples, sample_rate, self.sample_rate)
        start = max(0, int(round(t_start * self.sample_rate)))
        end = start + audio.size
        if end > self._buffer.size:
            grown = np.zeros(max(end, 2 * self._buffer.size, self.sample_rate * 10), np.float32)
            grown[:self.length] = self._buffer[:self.length]
            self._buffer = grown
        self._buffer[start:end] += audio
        self.length = max(self.length, end)

    def truncate(self, t: float) -> None:
        if self.sample_rate is None:
            return
        cut = max(0, int(round(t * self.sample_rate)))
        if cut < self.length:
            self._buffer[cut:self.length] = 0.0
            self.length = cut

    def audio(self, sample_rate: int) -> np.ndarray:
        if self.sample_rate is None:
            return np.zeros(0, np.float32)
        return resample(self._buffer[:self.length].copy(), self.sample_rate, sample_rate)
