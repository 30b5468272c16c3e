"""Acoustic echo cancellation: remove the agent's own voice (the far end, what the speaker played) from the
microphone signal (the near end), and a guard that recognises the agent's words when some echo gets through anyway.

Two real cancellers; ``io.echo`` offers the first:

- ``aec`` / ``webrtc`` (the default): WebRTC's AEC3 (Chrome's), through the ``pywebrtc-audio`` wheel. It estimates the
  echo path delay itself (so a reference aligned to a few tens of ms is enough), adapts in about a second, and its
  residual-echo suppressor removes what the linear filter leaves. Measured best here (``python -m fern.bench.aec``).
- ``speex``: SpeexDSP's MDF canceller + residual echo suppressor (Debian's ``libspeexdsp1`` through ctypes). Needs the
  reference aligned within its filter tail; measured by ``fern.bench.aec`` for comparison, not offered as
  ``io.echo``: it removed 15.6 dB of echo (AEC3: 59 dB) and the live agent interrupted or answered its own echo.

All of them take float32 mono blocks at one sample rate, any length, and return the cleaned near end, same length.
"""

from __future__ import annotations

from fern.echo.cancellers import (
                                  EchoCanceller,
                                  NoEchoCanceller,
                                  SpeexEchoCanceller,
                                  WebRtcEchoCanceller,
                                  erle_db,
                                  make_echo_canceller,
)
from fern.echo.guard import is_self_speech, self_speech_score

__all__ = ["EchoCanceller", "NoEchoCanceller", "SpeexEchoCanceller", "WebRtcEchoCanceller", "erle_db",
           "make_echo_canceller", "is_self_speech", "self_speech_score"]
