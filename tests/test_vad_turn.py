"""Real webrtcvad on real (espeak-ng) speech, and the silence endpointer's timing."""

from __future__ import annotations

import numpy as np
import pytest

from fern.errors import ConfigValueError
from fern.turn.silence import SilenceEndpointer
from fern.vad.webrtc import WebRtcVad


def frames(audio: np.ndarray, n: int):
    for i in range(0, audio.size - n + 1, n):
        yield audio[i:i + n]


def test_webrtc_vad_separates_speech_from_silence(speech):
    vad = WebRtcVad(aggressiveness=2, frame_ms=20, sample_rate=16000)
    voiced = [vad.is_speech(f) for f in frames(speech("Please tell me a short story about a fox."), 320)]
    silent = [vad.is_speech(f) for f in frames(np.zeros(16000, np.float32), 320)]
    noise = [vad.is_speech(f) for f in frames(np.random.default_rng(0).normal(0, 1e-4, 16000).astype(np.float32), 320)]
    assert np.mean(voiced) > 0.6
    assert not any(silent) and np.mean(noise) < 0.1


@pytest.mark.parametrize("kwargs", [{"frame_ms": 25}, {"sample_rate": 22050}, {"aggressiveness": 5}])
def test_webrtc_vad_rejects_unsupported_settings(kwargs):
    with pytest.raises(ConfigValueError):
        WebRtcVad(**kwargs)


def run_endpointer(pattern: str, frame_s: float = 0.02, **kwargs):
    ep = SilenceEndpointer(**kwargs)
    turns = []
    for i, ch in enumerate(pattern):
        turn = ep.push((i + 1) * frame_s, frame_s, ch == "x")
        if turn:
            turns.append(turn)
    return turns


def test_turn_ends_after_silence_threshold():
    # 0.5 s speech, 0.2 s pause (not an end), 0.3 s speech, then 1 s silence
    pattern = "x" * 25 + "." * 10 + "x" * 15 + "." * 50
    (start, last_voiced, end), = run_endpointer(pattern, silence_ms=700)
    assert start == pytest.approx(0.0, abs=1e-9)
    assert last_voiced == pytest.approx(1.0)
    assert end - last_voiced == pytest.approx(0.7)


def test_clicks_and_blips_are_not_turns():
    assert run_endpointer("x" + "." * 60 + "xx" + "." * 60, min_speech_ms=200) == []


def test_two_turns_are_separate():
    pattern = ("x" * 20 + "." * 40) * 2
    turns = run_endpointer(pattern, silence_ms=700)
    assert len(turns) == 2 and turns[1][0] == pytest.approx(1.2)
