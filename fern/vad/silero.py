"""Silero VAD (ONNX, run with onnxruntime alone): a speech probability per 32 ms window, turned into speech /
non-speech with hysteresis.

The model is recurrent: its state ([2, 1, 128]) and the last 64 samples of the previous window (the context it
was trained with) are carried from frame to frame, so frames must be fed in order. Hysteresis: speech starts when
the probability reaches ``start_threshold`` and stops only once it falls below ``stop_threshold`` (the values
Silero's own iterator uses: 0.5 and 0.5 - 0.15), so a soft syllable inside a word does not end speech.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fern.errors import ConfigValueError


@dataclass
class SileroVadConfig:
    _target_: str = "fern.vad.silero.SileroVad"
    path: str = "${fern.models:silero_vad/silero_vad.onnx}"
    sample_rate: int = 16000  # 16000 (512-sample windows) or 8000 (256)
    frame_ms: int = 32  # the model's window: fixed
    start_threshold: float = 0.5
    stop_threshold: float = 0.35
    threads: int = 1


SCHEMAS: dict[str, dict[str, type]] = {"vad": {"silero": SileroVadConfig}}


class SileroVad:
    FRAME_MS = 32
    CONTEXT = {16000: 64, 8000: 32}  # samples of the previous window prepended to each new one

    def __init__(self, path: str, sample_rate: int = 16000, frame_ms: int = 32, start_threshold: float = 0.5,
                 stop_threshold: float = 0.35, threads: int = 1) -> None:
        if sample_rate not in self.CONTEXT:
            raise ConfigValueError(f"vad.sample_rate={sample_rate}: Silero VAD takes 16000 or 8000 Hz")
        if frame_ms != self.FRAME_MS:
            raise ConfigValueError(f"vad.frame_ms={frame_ms}: Silero VAD works on {self.FRAME_MS} ms windows")
        if not 0.0 < stop_threshold <= start_threshold < 1.0:
            raise ConfigValueError(f"vad thresholds must satisfy 0 < stop_threshold <= start_threshold < 1, got "
                                   f"stop={stop_threshold}, start={start_threshold}")
        from fern.turn.onnx import onnx_session

        self._session = onnx_session(path, "Silero VAD", threads)
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self.start_threshold = start_threshold
        self.stop_threshold = stop_threshold
        self._sr = np.array(sample_rate, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state (a new, unrelated stream starts)."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(self.CONTEXT[self.sample_rate], dtype=np.float32)
        self._speaking = False
        self.last_probability = 0.0

    def probability(self, frame: np.ndarray) -> float:
        """P(speech) for the next window; advances the model's state."""
        if frame.size != self.frame_samples:
            raise ValueError(f"Silero VAD needs frames of {self.frame_samples} samples, got {frame.size}")
        window = np.concatenate([self._context, frame.astype(np.float32, copy=False)])[None, :]
        out, self._state = self._session.run(None, {"input": window, "state": self._state, "sr": self._sr})
        self._context = window[0, -self._context.size:]
        self.last_probability = float(out.reshape(-1)[0])
        return self.last_probability

    def is_speech(self, frame: np.ndarray) -> bool:
        p = self.probability(frame)
        self._speaking = p >= (self.stop_threshold if self._speaking else self.start_threshold)
        return self._speaking
