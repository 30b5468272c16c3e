"""WebRTC's GMM voice activity detector (webrtcvad-wheels): microseconds per frame on a CPU."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fern.audio import float_to_pcm16
from fern.errors import ConfigValueError


@dataclass
class WebRtcVadConfig:
    _target_: str = "fern.vad.webrtc.WebRtcVad"
    aggressiveness: int = 2  # 0 (lenient) .. 3 (strict about what is speech)
    frame_ms: int = 20
    sample_rate: int = "${io.source.sample_rate}"  # type: ignore[assignment]


SCHEMAS = {"vad": {"webrtc": WebRtcVadConfig}}


class WebRtcVad:
    SAMPLE_RATES = (8000, 16000, 32000, 48000)
    FRAME_MS = (10, 20, 30)

    def __init__(self, aggressiveness: int = WebRtcVadConfig.aggressiveness,
                 frame_ms: int = WebRtcVadConfig.frame_ms, sample_rate: int = 16000) -> None:
        if aggressiveness not in range(4):
            raise ConfigValueError(f"vad.aggressiveness={aggressiveness} must be 0, 1, 2 or 3")
        if frame_ms not in self.FRAME_MS:
            raise ConfigValueError(f"vad.frame_ms={frame_ms} must be one of {self.FRAME_MS} for webrtcvad")
        if sample_rate not in self.SAMPLE_RATES:
            raise ConfigValueError(f"vad.sample_rate={sample_rate} must be one of {self.SAMPLE_RATES} for webrtcvad")
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000

    def is_speech(self, frame: np.ndarray) -> bool:
        if frame.size != self.frame_samples:
            raise ValueError(f"webrtcvad needs frames of {self.frame_samples} samples, got {frame.size}")
        return self._vad.is_speech(float_to_pcm16(frame), self.sample_rate)
