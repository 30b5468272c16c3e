"""Smart Turn v3.2 (pipecat-ai, BSD-2-Clause): an audio model of "has the speaker finished?", run with onnxruntime.

Input: the last 8 s of the turn at 16 kHz, zero-padded on the LEFT, as Whisper log-mel features (80 x 800, exactly
``WhisperFeatureExtractor(chunk_length=8)`` with its default waveform normalisation; computed here in numpy so no
transformers import is needed). Output: P(complete), a sigmoid already applied inside the graph.

``turn=smart_turn`` is the audio-only anchor, as pipecat uses it: score once at a short silence, end the turn if
P >= threshold, else wait (optionally re-scoring every ``step_ms``) until ``max_silence_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fern.errors import ConfigValueError
from fern.turn.base import PauseState, Verdict

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80


def _mel_filters(n_freqs: int = N_FFT // 2 + 1, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, (n_freqs, n_mels): librosa's / Whisper's defaults."""

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        linear = 3.0 * f / 200.0
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * 27.0 / np.log(6.4), linear)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        linear = 200.0 * m / 3.0
        return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), linear)

    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    fft_hz = np.linspace(0, sample_rate // 2, n_freqs)
    slopes = edges_hz[None, :] - fft_hz[:, None]  # (n_freqs, n_mels + 2)
    widths = np.diff(edges_hz)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[None, :]


_FILTERS = _mel_filters()
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann


def fit_window(audio: np.ndarray, seconds: float = 8.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The last ``seconds`` of ``audio``, zero-padded on the left to exactly that length."""
    n = int(round(seconds * sample_rate))
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size >= n:
        return audio[-n:]
    return np.concatenate([np.zeros(n - audio.size, np.float32), audio])


def whisper_log_mel(window: np.ndarray) -> np.ndarray:
    """Whisper log-mel features of a fixed-length 16 kHz window (waveform normalised to zero mean, unit variance
    first, as WhisperFeatureExtractor(do_normalize=True)): (80, len // 160) float32."""
    x = np.asarray(window, dtype=np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (n_frames, n_freqs)
    mel = np.log10(np.maximum(power @ _FILTERS, 1e-10)).T[:, :-1]  # the last frame is dropped, as Whisper does
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


class SmartTurnModel:
    """P(the turn is complete) from the audio of the turn so far."""

    def __init__(self, path: str, threads: int = 1, max_seconds: float = 8.0) -> None:
        from fern.turn.onnx import onnx_session

        if not 0 < max_seconds <= 8.0:
            raise ConfigValueError(f"Smart Turn max_seconds={max_seconds}: the model takes at most 8 s")
        self.path = path
        self.max_seconds = max_seconds
        self._session = onnx_session(path, "Smart Turn v3", threads)

    def features(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        if sample_rate != SAMPLE_RATE:
            from fern.audio import resample

            audio = resample(audio, sample_rate, SAMPLE_RATE)
        # the model was trained on 8 s windows; a shorter max_seconds keeps less history, still padded to 8 s
        return whisper_log_mel(fit_window(fit_window(audio, self.max_seconds), 8.0))

    def probability(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
        if audio.size == 0:
            raise ValueError("Smart Turn needs some audio")
        (out,) = self._session.run(None, {"input_features": self.features(audio, sample_rate)[None]})
        return float(np.asarray(out).reshape(-1)[0])


def silence_checkpoints(min_silence_ms: int, step_ms: int, max_silence_ms: int) -> tuple[float, ...]:
    """min_silence, then every step (0: none) below max_silence, then max_silence (the turn ends there)."""
    if min_silence_ms <= 0 or max_silence_ms <= min_silence_ms or step_ms < 0:
        raise ConfigValueError(f"turn: need 0 < min_silence_ms < max_silence_ms and step_ms >= 0, got "
                               f"min={min_silence_ms}, max={max_silence_ms}, step={step_ms}")
    points = [min_silence_ms]
    while step_ms and points[-1] + step_ms < max_silence_ms:
        points.append(points[-1] + step_ms)
    points.append(max_silence_ms)
    return tuple(p / 1000 for p in points)


@dataclass
class SmartTurnModelConfig:
    _target_: str = "fern.turn.smart_turn.SmartTurnModel"
    path: str = "${fern.models:smart_turn/smart-turn-v3.2-cpu.onnx}"
    threads: int = 1
    max_seconds: float = 8.0


@dataclass
class SmartTurnConfig:
    _target_: str = "fern.turn.smart_turn.SmartTurnDetector"
    model: SmartTurnModelConfig = field(default_factory=SmartTurnModelConfig)
    threshold: float = 0.5  # P(complete) at which the turn ends (pipecat's default)
    min_silence_ms: int = 200  # first score (pipecat: VAD stop_secs 0.2)
    step_ms: int = 0  # re-score every step_ms of further silence; 0 = score once, as pipecat does
    max_silence_ms: int = 3000  # the turn ends here whatever the model said (pipecat's stop_secs)
    min_speech_ms: int = 200
    speech_start_ms: int = 60


class SmartTurnDetector:
    needs_transcript = False

    def __init__(self, model: SmartTurnModel, threshold: float = 0.5, min_silence_ms: int = 200, step_ms: int = 0,
                 max_silence_ms: int = 3000, min_speech_ms: int = 200, speech_start_ms: int = 60) -> None:
        if not 0.0 < threshold < 1.0:
            raise ConfigValueError(f"turn.threshold={threshold} must be in (0, 1)")
        self.model = model
        self.threshold = threshold
        self.checkpoints_s = silence_checkpoints(min_silence_ms, step_ms, max_silence_ms)
        self.min_speech_ms, self.speech_start_ms = min_speech_ms, speech_start_ms

    def score(self, state: PauseState) -> dict[str, float]:
        return {"audio": self.model.probability(state.audio, state.sample_rate)}

    def rule(self, scores: dict[str, float], silence_s: float, threshold: float | None = None) -> Verdict:
        p = scores["audio"]
        return Verdict(end=p >= (self.threshold if threshold is None else threshold), probability=p)

    def decide(self, state: PauseState) -> Verdict:
        return self.rule(self.score(state), state.silence_s)


SCHEMAS: dict[str, dict[str, type]] = {"turn": {"smart_turn": SmartTurnConfig}}
