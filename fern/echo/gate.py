"""When the echo is too weak to matter, let the microphone through as it is: AEC3's double-talk suppressor eats speech.

WebRTC AEC3 attenuates the near end whenever the far end plays and it cannot rule out echo there. Measured offline on
recorded microphone + reference audio (espeak reply on the speaker, asterisk prompts talked over it, 10 onsets per
case, webrtcvad on 20 ms frames): with no echo at all in the microphone (a headset, a quiet speaker, the test rig's
unlooped null sinks), AEC3 hid the first 100-500 ms of the user's speech in some onsets and chopped what followed, so
2 of 10 barge-ins were missed and others came late; with a strong echo path it has converged and behaves (206-236 ms
to a barge-in, no misses).

The gate compares the microphone with the echo the reference predicts: the echo return loss (microphone power over
recent reference power, 80th percentile over the last ``history_s`` of frames the canceller found to be echo, i.e. it
removed >= 10 dB or the microphone was silent) times the loudest reference power of the last ``window_ms`` (the echo
path's delay and reverberation). Where the microphone is ``margin_db`` above that prediction, the echo is at most
``-margin_db`` relative to it: the raw block is passed, untouched by the suppressor. Until ``min_frames`` echo frames
have been seen the echo path is assumed to be at unity gain (0 dB), so a fresh session never lets echo through.
Where AEC3 goes on suppressing a long double talk, those blocks count as echo and raise the estimate, so the gate
closes again after a second or so: it is there for onsets (barge-in needs the first 200 ms), not for whole turns.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class NearEndGate:
    def __init__(self, sample_rate: int = 16000, block_ms: int = 20, margin_db: float = 10.0,
                 window_ms: float = 300.0, history_s: float = 3.0, min_frames: int = 25) -> None:
        self.margin = 10 ** (margin_db / 10)
        self._ref_power: deque[float] = deque(maxlen=max(1, int(window_ms / block_ms)))
        self._ratios: deque[float] = deque(maxlen=max(min_frames, int(history_s * 1000 / block_ms)))
        self.min_frames = min_frames
        self.floor = 1e-6  # reference power below this (-60 dBFS): the speaker is silent
        self.passed = 0  # blocks let through raw

    @property
    def echo_return_loss(self) -> float:
        """Estimated echo power / reference power (1.0 = 0 dB until enough echo has been seen)."""
        if len(self._ratios) < self.min_frames:
            return 1.0
        return float(np.percentile(self._ratios, 80))

    def choose(self, mic: np.ndarray, far: np.ndarray, cleaned: np.ndarray) -> np.ndarray:
        """``mic`` when the predicted echo is ``margin_db`` under it (or the speaker is silent), else ``cleaned``."""
        p_mic = float(np.mean(np.square(mic, dtype=np.float64)))
        self._ref_power.append(float(np.mean(np.square(far, dtype=np.float64))))
        p_ref = max(self._ref_power)
        if p_ref <= self.floor:
            return cleaned  # nothing played lately: the canceller passes the microphone anyway
        p_out = float(np.mean(np.square(cleaned, dtype=np.float64)))
        if p_mic < 1e-8 or p_out < 0.1 * p_mic:  # an echo frame (or silence): it tells the echo path's loss
            self._ratios.append(p_mic / p_ref)
        if p_mic > self.margin * self.echo_return_loss * p_ref:
            self.passed += 1
            return np.asarray(mic, np.float32)
        return cleaned
