"""File source and timeline sink, and bad input: corrupt, empty, silence-only, stereo 8 kHz, 44.1 kHz."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fern.audio import read_wav, resample
from fern.errors import AudioInputError
from fern.io.file import TimelineSink, WavFileSource
from fern.quality import word_error_rate

ASTERISK = Path("/usr/share/asterisk/sounds/en")


def test_stereo_8k_input_is_mixed_down_and_resampled(write_wav, tiny_en):
    # real human telephone speech (asterisk prompt, 8 kHz): "Weasels have eaten our phone system"
    mono8k = read_wav(ASTERISK / "tt-weasels.wav", 8000)
    stereo = np.stack([mono8k, 0.5 * mono8k], axis=1)
    path = write_wav("stereo8k.wav", stereo, 8000)
    audio = read_wav(path, 16000)
    assert audio.ndim == 1 and abs(audio.size - 2 * mono8k.size) <= 2
    assert word_error_rate("Weasels have eaten our phone system", tiny_en.transcribe(audio)) <= 0.2


def test_44k_input_is_resampled_to_pipeline_rate(write_wav, speech):
    original = speech("Good morning.")
    path = write_wav("cd.wav", resample(original, 16000, 44100), 44100)
    audio = read_wav(path, 16000)
    assert abs(audio.size - original.size) <= 2
    # the content survives: strong correlation with the original
    n = min(audio.size, original.size)
    assert np.corrcoef(audio[:n], original[:n])[0, 1] > 0.95


def test_corrupt_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4)
    with pytest.raises(AudioInputError, match="not a readable audio file"):
        WavFileSource(str(bad))


def test_empty_file_and_missing_file_are_clear_errors(tmp_path, write_wav):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioInputError, match="empty"):
        WavFileSource(str(empty))
    no_samples = write_wav("nosamples.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioInputError, match="no samples"):
        WavFileSource(str(no_samples))
    with pytest.raises(AudioInputError, match="does not exist"):
        WavFileSource(str(tmp_path / "absent.wav"))


def test_source_paces_blocks_like_a_microphone(write_wav):
    path = write_wav("tone.wav", np.zeros(16000 // 2, np.float32), 16000)  # 0.5 s
    source = WavFileSource(str(path), block_ms=20, realtime=True, trailing_silence_s=0.0)
    start = time.perf_counter()
    blocks = list(source.blocks())
    elapsed = time.perf_counter() - start
    assert len(blocks) == 25 and all(b.size == 320 for b in blocks)
    assert elapsed >= 0.48  # never faster than real time
    fast = WavFileSource(str(path), block_ms=20, realtime=False, trailing_silence_s=0.0)
    assert len(list(fast.blocks())) == 25


def test_bad_block_size_is_rejected(write_wav):
    path = write_wav("x.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(Exception, match="block_ms"):
        WavFileSource(str(path), block_ms=0)


def test_timeline_sink_places_user_and_serialises_agent_audio():
    sink = TimelineSink(sample_rate=1000)
    sink.record_user(np.full(500, 0.1, np.float32), 1000, t_end=1.0)  # user spoke 0.5..1.0 s
    first = sink.play(np.full(300, 0.2, np.float32), 1000, t=1.2)
    second = sink.play(np.full(300, 0.3, np.float32), 1000, t=1.3)  # arrives while the first still plays
    assert first == pytest.approx(1.2) and second == pytest.approx(1.5)
    timeline = sink.timeline()
    assert timeline.size == 1800
    assert timeline[400] == 0 and timeline[600] == pytest.approx(0.1, abs=1e-6)
    assert timeline[1300] == pytest.approx(0.2, abs=1e-6) and timeline[1600] == pytest.approx(0.3, abs=1e-6)


def test_stopping_the_speaker_drops_what_was_not_heard():
    sink = TimelineSink(sample_rate=1000)
    assert sink.play(np.full(1000, 0.2, np.float32), 1000, t=1.0) == pytest.approx(1.0)  # queued until 2.0 s
    sink.stop(1.4)  # interrupted 0.4 s in
    agent = sink.track("agent")
    assert agent.size == 1400 and np.all(agent[1000:1400] > 0)
    # the next reply is not queued behind the dropped audio
    assert sink.play(np.full(100, 0.3, np.float32), 1000, t=1.5) == pytest.approx(1.5)


def test_user_track_keeps_its_own_rate_until_output():
    sink = TimelineSink(sample_rate=24000)
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    for i in range(50):  # 20 ms blocks, as the microphone delivers them
        sink.record_user(tone[i * 320:(i + 1) * 320], 16000, t_end=(i + 1) * 0.02)
    out = sink.track("user")
    assert abs(out.size - 24000) <= 2
    # one smooth sine: no seams where the 20 ms blocks meet
    spectrum = np.abs(np.fft.rfft(out[2400:21600]))
    assert np.argmax(spectrum) == pytest.approx(440 * 19200 / 24000, abs=2)
    assert spectrum[np.argmax(spectrum)] > 50 * np.median(spectrum)
