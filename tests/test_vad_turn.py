"""Real webrtcvad on real (espeak-ng) speech, and the silence endpointer's timing."""

from __future__ import annotations

import numpy as np
import pytest

from fern.errors import ConfigValueError
from fern.turn.segmenter import Checkpoint, Segmenter
from fern.turn.silence import SilenceTurnDetector
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
    """Drive the silence detector through the Segmenter the way the listener does."""
    detector = SilenceTurnDetector(**kwargs)
    segmenter = Segmenter(detector.checkpoints_s, detector.speech_start_ms, detector.min_speech_ms)
    turns = []
    for i, ch in enumerate(pattern):
        signal = segmenter.push((i + 1) * frame_s, frame_s, ch == "x")
        if isinstance(signal, Checkpoint) and (signal.last or detector.decide(None).end):
            bounds = segmenter.end_turn(signal.t)
            if bounds:
                turns.append((bounds.t_start, bounds.t_last_voiced, bounds.t_end))
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


def test_segmenter_reports_checkpoints_and_resumption_in_order():
    from fern.turn.segmenter import Resume, SpeechStart

    segmenter = Segmenter([0.2, 0.5], speech_start_ms=60, min_speech_ms=200)
    pattern = "x" * 20 + "." * 15 + "x" * 10 + "." * 30  # 0.4 s speech, 0.3 s pause, 0.2 s speech, 0.6 s silence
    signals = [s for i, ch in enumerate(pattern) if (s := segmenter.push(round((i + 1) * 0.02, 3), 0.02, ch == "x"))]
    kinds = [type(s).__name__ for s in signals]
    assert kinds == ["SpeechStart", "Checkpoint", "Resume", "Checkpoint", "Checkpoint"]
    assert isinstance(signals[0], SpeechStart) and signals[0].t == pytest.approx(0.0, abs=1e-9)
    assert signals[1].silence_s == pytest.approx(0.2) and not signals[1].last
    assert isinstance(signals[2], Resume) and signals[2].pause_s == pytest.approx(0.3)
    assert signals[4].last and signals[4].t_last_voiced == pytest.approx(0.9)
    assert segmenter.pauses == [(pytest.approx(0.4), pytest.approx(0.7))]  # the pause the user spoke after
    bounds = segmenter.end_turn(signals[4].t)
    assert (bounds.t_start, bounds.t_last_voiced) == (pytest.approx(0.0, abs=1e-9), pytest.approx(0.9))
    assert not segmenter.in_turn and segmenter.pauses == []


def test_pauses_the_user_spoke_after_are_shortened_for_the_models():
    from fern.turn.segmenter import squeeze_pauses

    rate = 1000
    audio = np.concatenate([np.full(400, 1.0), np.zeros(1200), np.full(300, 2.0), np.zeros(200), np.full(100, 3.0)])
    t0 = 0.5  # the clip starts 0.5 s into the session
    out = squeeze_pauses(audio, rate, t0, [(0.9, 2.1), (2.4, 2.6)], keep_s=0.3)
    # the 1.2 s pause keeps 0.15 s at each edge; the 0.2 s one is already short enough
    expected = np.concatenate([np.full(400, 1.0), np.zeros(300), np.full(300, 2.0), np.zeros(200),
                               np.full(100, 3.0)])
    np.testing.assert_array_equal(out, expected)
    assert squeeze_pauses(audio, rate, t0, [], keep_s=0.3) is audio
    # a pause reaching past the clip's end (the clip was cut inside it) loses only what the clip has
    assert squeeze_pauses(audio[:1000], rate, t0, [(0.9, 2.1)], keep_s=0.3).size == 550


def test_segmenter_rejects_checkpoints_out_of_order():
    with pytest.raises(ConfigValueError):
        Segmenter([0.5, 0.2])


def test_silence_is_counted_in_frames_not_arrival_stamps():
    # frames of 32 ms whose arrival stamps jitter by up to 15 ms (a busy capture thread): the first checkpoint
    # (96 ms) must come with the third silent frame, whatever the stamps say
    rng = np.random.default_rng(0)
    for _ in range(20):
        segmenter = Segmenter([0.096, 0.5], speech_start_ms=60, min_speech_ms=200)
        pattern = "x" * 10 + "." * 5
        jitter = rng.uniform(-0.015, 0.015, len(pattern))
        jitter[9] = 0.015  # the last voiced frame stamped late: by the stamps, the third silent frame is at ~81 ms
        signals = [segmenter.push((i + 1) * 0.032 + jitter[i], 0.032, ch == "x") for i, ch in enumerate(pattern)]
        checkpoints = [i for i, s in enumerate(signals) if isinstance(s, Checkpoint)]
        assert checkpoints == [12]
        assert signals[12].silence_s == pytest.approx(0.096)
