"""P(end of turn | words) from the real offline SmolLM2-135M."""

from __future__ import annotations

import pytest

from fern.errors import ConfigValueError, MissingWeightsError
from fern.turn.text_eot import TextEndOfTurnModel, normalize_text

pytestmark = pytest.mark.models  # real turn-taking models on real speech: the full tier


def test_a_complete_question_scores_above_a_fragment(text_model):
    complete = text_model.probability("What is the capital of France?")
    fragment = text_model.probability("I want to go to the")
    assert 0.0 <= fragment < complete <= 1.0
    assert complete > 100 * fragment  # not a near tie: orders of magnitude apart
    assert text_model.probability("") == 0.0


def test_the_cached_prefix_is_restored_after_each_call(text_model):
    first = text_model.probability("Please enter your password followed by the pound key.")
    text_model.probability("I want to go to the")
    assert text_model.probability("Please enter your password followed by the pound key.") == pytest.approx(first)


def test_normalize_drops_punctuation_and_case():
    assert normalize_text("  Well, I'm   NOT sure... re-enter it?") == "well i'm not sure re-enter it"


def test_bad_values_are_rejected(text_model, smollm2):
    with pytest.raises(ConfigValueError, match="end_token"):
        TextEndOfTurnModel.from_loaded(smollm2.model, smollm2.tokenizer, end_token="<|no_such_token|>")
    with pytest.raises(ConfigValueError, match="max_tokens"):
        TextEndOfTurnModel("unused", max_tokens=2)


def test_missing_gguf_is_one_line_naming_setup(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        TextEndOfTurnModel(str(tmp_path), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "\n" not in str(err.value) and "scripts/setup.sh" in str(err.value)
