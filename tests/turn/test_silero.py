"""Silero VAD (ONNX) on real human speech."""

from __future__ import annotations

import numpy as np
import pytest

from fern.errors import ConfigValueError, MissingWeightsError
from fern.protocols import VoiceActivityDetector
from fern.vad.silero import SileroVad

from .conftest import SILERO, with_silence

pytestmark = pytest.mark.models  # real turn-taking models on real speech: the full tier


def decisions(vad: SileroVad, audio: np.ndarray) -> np.ndarray:
    n = vad.frame_samples
    return np.array([vad.is_speech(audio[i:i + n]) for i in range(0, audio.size - n + 1, n)])


def test_separates_real_speech_from_silence(prompt):
    vad = SileroVad(str(SILERO))
    assert isinstance(vad, VoiceActivityDetector) and vad.frame_ms == 32 and vad.frame_samples == 512
    speech = prompt("conf-getconfno")  # 3.3 s of fluent speech
    audio = with_silence(1.0, speech, 1.0)
    d = decisions(vad, audio)
    lead, body, tail = d[:25], d[34:34 + int(speech.size / 512) - 4], d[-25:]  # 1 s = 31 frames; skip the edges
    assert not lead.any() and not tail.any()
    assert body.mean() > 0.85
    # the state carries across frames: after reset() the same audio gives the same decisions
    vad.reset()
    assert np.array_equal(decisions(vad, audio), d)


def test_hysteresis_holds_speech_through_dips(prompt):
    """Same probabilities, two rules: with a lower stop threshold speech lasts longer and never flips more."""
    audio = with_silence(0.5, prompt("ss-noservice"), 0.5)  # two sentences, a pause between them
    plain = decisions(SileroVad(str(SILERO), start_threshold=0.5, stop_threshold=0.5), audio)
    held = decisions(SileroVad(str(SILERO), start_threshold=0.5, stop_threshold=0.15), audio)
    assert np.all(held >= plain) and held.sum() > plain.sum()  # once speaking, only a lower probability ends it
    flips = lambda d: int(np.sum(d[1:] != d[:-1]))  # noqa: E731
    assert flips(held) <= flips(plain)
    assert not held[:10].any() and not held[-10:].any()


def test_8khz_works_and_bad_settings_are_rejected(prompt):
    from fern.audio import resample

    vad8 = SileroVad(str(SILERO), sample_rate=8000)
    speech8 = resample(with_silence(0.5, prompt("conf-getpin"), 0.5), 16000, 8000)
    assert decisions(vad8, speech8).mean() > 0.3
    for kwargs in ({"sample_rate": 22050}, {"frame_ms": 30}, {"start_threshold": 0.3, "stop_threshold": 0.5},
                   {"start_threshold": 1.0}, {"threads": 0}):
        with pytest.raises(ConfigValueError):
            SileroVad(str(SILERO), **kwargs)
    with pytest.raises(ValueError, match="512"):
        SileroVad(str(SILERO)).is_speech(np.zeros(480, np.float32))


def test_missing_model_file_is_one_line_naming_setup(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        SileroVad(str(tmp_path / "silero_vad.onnx"))
    assert "\n" not in str(err.value) and "scripts/setup.sh" in str(err.value)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(MissingWeightsError, match="setup.sh"):
        SileroVad(str(broken))


def test_preset_composes_and_builds(compose):
    from hydra.utils import instantiate

    cfg = compose(["vad=silero", "io.input=x.wav"])
    vad = instantiate(cfg.vad)
    assert isinstance(vad, SileroVad) and vad.sample_rate == 16000
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="start_threshold"):  # the schema types the thresholds
        compose(["vad=silero", "io.input=x.wav", "vad.start_threshold=high"])
