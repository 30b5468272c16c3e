"""Smart Turn v3.2 (ONNX) on real human speech, and the turn=smart_turn detector."""

from __future__ import annotations

import numpy as np
import pytest

from fern.errors import ConfigValueError, MissingWeightsError
from fern.turn.base import PauseState, TurnDetector
from fern.turn.smart_turn import SmartTurnDetector, SmartTurnModel, fit_window, silence_checkpoints, whisper_log_mel

from .conftest import CUTS, SMART_TURN, with_silence

pytestmark = pytest.mark.models  # real turn-taking models on real speech: the full tier


@pytest.mark.parametrize("seconds", [1.3, 8.0, 11.0])
def test_features_equal_whisper_feature_extractor(prompt, seconds):
    from transformers import WhisperFeatureExtractor

    speech = np.tile(prompt("conf-getconfno"), 4)[:int(seconds * 16000)]
    window = fit_window(speech, 8.0)
    assert window.size == 128000
    if seconds < 8:  # zero-padded on the LEFT: the speech ends the window
        assert not window[:128000 - speech.size].any() and np.array_equal(window[-speech.size:], speech)
    else:  # the LAST 8 s are kept
        assert np.array_equal(window, speech[-128000:])
    ref = WhisperFeatureExtractor(chunk_length=8)(window, sampling_rate=16000, return_tensors="np",
                                                  do_normalize=True).input_features[0]
    ours = whisper_log_mel(window)
    assert ours.shape == ref.shape == (80, 800)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_complete_prompts_score_higher_than_mid_sentence_cuts(smart_turn_model, prompt, cut_prompt):
    scores = {name: (smart_turn_model.probability(with_silence(0.3, prompt(name), 0.2)),
                     smart_turn_model.probability(with_silence(0.3, cut_prompt(name), 0.2))) for name in CUTS}
    assert all(0.0 <= p <= 1.0 for pair in scores.values() for p in pair)
    # right on most, not all: "Please enter the |" scores 0.90 against 0.60 for the whole prompt. Sound alone is not
    # enough, which is why turn=semantic reads the words too
    assert sum(cut < complete for complete, cut in scores.values()) >= 3, scores
    assert np.mean([cut for _, cut in scores.values()]) < np.mean([complete for complete, _ in scores.values()])


def test_8khz_input_is_resampled(smart_turn_model, prompt):
    from fern.audio import resample

    audio = with_silence(0.3, prompt("conf-getpin"), 0.2)
    p16 = smart_turn_model.probability(audio, 16000)
    p8 = smart_turn_model.probability(resample(audio, 16000, 8000), 8000)
    assert abs(p16 - p8) < 0.15


def test_detector_ends_on_its_threshold_and_at_the_last_checkpoint(smart_turn_model, prompt, cut_prompt):
    det = SmartTurnDetector(smart_turn_model, threshold=0.5, min_silence_ms=200, step_ms=0, max_silence_ms=3000)
    assert isinstance(det, TurnDetector) and not det.needs_transcript
    assert det.checkpoints_s == (0.2, 3.0)
    complete = det.decide(PauseState(with_silence(0.3, prompt("conf-getconfno"), 0.2), 16000, 0.2))
    cut = det.decide(PauseState(with_silence(0.3, cut_prompt("conf-getconfno"), 0.2), 16000, 0.2))
    assert complete.probability > cut.probability
    assert complete.end == (complete.probability >= 0.5) and cut.end == (cut.probability >= 0.5)


def test_checkpoints_and_bad_values():
    assert silence_checkpoints(160, 96, 500) == (0.16, 0.256, 0.352, 0.448, 0.5)
    assert silence_checkpoints(200, 0, 3000) == (0.2, 3.0)
    for args in ((0, 0, 100), (300, 0, 300), (200, -1, 900)):
        with pytest.raises(ConfigValueError):
            silence_checkpoints(*args)
    with pytest.raises(ConfigValueError):
        SmartTurnModel(str(SMART_TURN), max_seconds=9)


def test_missing_model_file_is_one_line_naming_setup(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        SmartTurnModel(str(tmp_path / "smart-turn-v3.2-cpu.onnx"))
    assert "\n" not in str(err.value) and "scripts/setup.sh" in str(err.value)


def test_preset_composes_and_rejects_bad_values(compose):
    from hydra.utils import instantiate

    det = instantiate(compose(["turn=smart_turn", "io.input=x.wav"]).turn)
    assert isinstance(det, SmartTurnDetector) and det.threshold == 0.5
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException) as err:  # fern.app unwraps it to the ConfigValueError's one line
        instantiate(compose(["turn=smart_turn", "io.input=x.wav", "turn.threshold=1.5"]).turn)
    assert isinstance(err.value.__cause__, ConfigValueError)
