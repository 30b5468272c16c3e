"""turn=semantic, the default, over real speech: Smart Turn + Whisper's own reading of the pause (turn.words),
judged at 96 ms of silence, driven through the Segmenter the way the listener drives it."""

from __future__ import annotations

import pytest

from fern.turn.base import PauseState, TurnDetector

from .conftest import CUTS, with_silence
from .test_semantic import drive

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def semantic_preset():
    from fern.bench.turns import build, compose_group

    return build(compose_group(["turn=semantic"]).turn)


def test_ends_a_complete_utterance_at_the_first_checkpoint(semantic_preset, prompt, tiny_en):
    assert isinstance(semantic_preset, TurnDetector) and semantic_preset.words_model is not None
    assert not semantic_preset.needs_transcript  # it reads the pause itself: the reply's ASR can be any preset
    for name in ("vm-reenterpassword", "conf-getconfno"):
        seen = drive(semantic_preset, with_silence(0.5, prompt(name), 2.5), tiny_en)
        checkpoint, verdict = seen[-1]
        assert verdict.end and checkpoint.index == 0, (name, seen)  # at 96 ms of silence, not later
        assert len({c.t_last_voiced for c, _ in seen}) == 1


def test_a_finished_prompt_scores_above_the_same_prompt_paused_mid_sentence(semantic_preset, prompt, cut_prompt,
                                                                            tiny_en):
    for name in CUTS:
        finished = drive(semantic_preset, with_silence(0.5, prompt(name), 2.5), tiny_en)[0][1].probability
        head = cut_prompt(name)
        paused = drive(semantic_preset, with_silence(0.5, head, 1.2, prompt(name)[head.size:], 2.5), tiny_en)[0][1]
        assert finished > paused.probability, (name, finished, paused)


def test_waits_through_a_mid_sentence_pause(semantic_preset, prompt, cut_prompt, tiny_en):
    for name in CUTS:
        head = cut_prompt(name)
        seen = drive(semantic_preset, with_silence(0.5, head, 1.2, prompt(name)[head.size:], 2.5), tiny_en)
        final_pause = seen[-1][0].t_last_voiced
        assert final_pause > 0.5 + head.size / 16000 + 1.2, (name, seen)  # the turn ended after the pause
        assert not any(v.end for c, v in seen if c.t_last_voiced < final_pause)


def test_the_models_judge_each_pause_once(semantic_preset, prompt):
    audio = with_silence(0.3, prompt("conf-getpin"), 0.1)
    first = semantic_preset.score(PauseState(audio, 16000, 0.1))
    cached = semantic_preset._words_cache
    later = semantic_preset.score(PauseState(with_silence(0.3, prompt("conf-getpin"), 0.7), 16000, 0.7))
    assert first == later and semantic_preset._words_cache is cached  # same pause, same audio up to min_silence
    assert set(first) == {"audio", "punct", "entropy", "logprob", "last"}


def test_smart_turn_beside_whisper_scores_what_it_scores_alone(semantic_preset, prompt):
    from fern.turn.semantic import SemanticTurnDetector

    assert semantic_preset._audio_lane is not None  # the preset scores the two models side by side
    alone = SemanticTurnDetector(semantic_preset.audio_model, words=semantic_preset.words_model, min_silence_ms=96,
                                 weights=semantic_preset.weights.as_dict(), parallel=False)
    assert alone._audio_lane is None
    for name in ("conf-getpin", "vm-enter-num-to-call"):
        state = PauseState(with_silence(0.3, prompt(name), 0.1), 16000, 0.1)
        assert semantic_preset.score(state) == alone.score(state)


def test_its_verdict_carries_the_words_it_read(semantic_preset, prompt):
    from fern.quality import word_error_rate

    verdict = semantic_preset.decide(PauseState(with_silence(0.3, prompt("conf-getpin"), 0.1), 16000, 0.1))
    assert word_error_rate("Please enter the conference pin number.", verdict.words) <= 0.2, verdict.words
