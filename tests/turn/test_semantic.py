"""turn=semantic_asr (the reply ASR's confidence in the words) over real speech, driven through the Segmenter the way
the listener drives it; the combiner's config checks for every semantic preset."""

from __future__ import annotations

import numpy as np
import pytest

from fern.errors import ConfigValueError
from fern.turn.base import PauseState, TurnDetector
from fern.turn.semantic import SemanticTurnDetector, logit

from .conftest import CUTS, SILERO, with_silence

pytestmark = pytest.mark.models  # real turn-taking models on real speech: the full tier

@pytest.fixture(scope="module")
def semantic(smart_turn_model):
    """turn=semantic_asr at its calibrated operating point, sharing the suite's Smart Turn session."""
    from omegaconf import OmegaConf

    from fern.bench.turns import compose_group

    cfg = OmegaConf.to_container(compose_group(["turn=semantic_asr"]).turn, resolve=True)
    keys = ("min_silence_ms", "step_ms", "max_silence_ms", "end_threshold", "speculate_threshold", "weights",
            "early_weights", "early_threshold")
    return SemanticTurnDetector(smart_turn_model, None, **{k: cfg[k] for k in keys})


def drive(det, audio: np.ndarray, asr) -> list[tuple]:
    """Silero VAD -> Segmenter -> decide() at every checkpoint, the transcript from the real ASR at the first
    checkpoint of each pause (handed over at once here); stops at the first end. [(checkpoint, verdict)]."""
    from fern.turn.segmenter import Checkpoint, Resume, Segmenter, SpeechStart
    from fern.vad.silero import SileroVad

    vad = SileroVad(str(SILERO))
    seg = Segmenter(det.checkpoints_s, det.speech_start_ms, det.min_speech_ms)
    seen, t_start, transcript, logprob = [], 0.0, None, float("nan")
    for i in range(0, audio.size - 511, 512):
        t = (i + 512) / 16000
        event = seg.push(t, 0.032, vad.is_speech(audio[i:i + 512]))
        if isinstance(event, SpeechStart):
            t_start = event.t
        elif isinstance(event, Resume):
            transcript, logprob = None, float("nan")
        elif isinstance(event, Checkpoint):
            turn = audio[int(max(0.0, t_start - 0.3) * 16000):i + 512]
            if event.index == 0:
                transcript, logprob = asr.transcribe_scored(turn)
            verdict = det.decide(PauseState(turn, 16000, event.silence_s, transcript, logprob))
            seen.append((event, verdict))
            if verdict.end or event.last:
                seg.end_turn(t)
                break
    return seen


def test_ends_a_complete_utterance_well_before_the_last_checkpoint(semantic, prompt, tiny_en):
    assert isinstance(semantic, TurnDetector) and semantic.needs_transcript
    for name in ("vm-enter-num-to-call", "conf-getpin"):
        seen = drive(semantic, with_silence(0.5, prompt(name), 2.5), tiny_en)
        checkpoint, verdict = seen[-1]
        assert verdict.end and verdict.speculate and not checkpoint.last, (name, seen)
        assert seen[0][1].speculate  # a reply could be prepared from the first checkpoint on
        assert len({c.t_last_voiced for c, _ in seen}) == 1  # no earlier pause was taken for the end


def test_a_finished_prompt_scores_above_a_mid_sentence_pause_at_once(semantic, prompt, cut_prompt, tiny_en):
    finished = [drive(semantic, with_silence(0.5, prompt(n), 2.5), tiny_en)[0][1].probability
                for n in ("vm-enter-num-to-call", "conf-getpin")]
    paused = []
    for name in ("conf-getconfno", "vm-reenterpassword"):
        head = cut_prompt(name)
        paused.append(drive(semantic, with_silence(0.5, head, 1.2, prompt(name)[head.size:], 2.5),
                            tiny_en)[0][1].probability)
    assert min(finished) > max(paused), (finished, paused)


def test_waits_through_a_mid_sentence_pause(semantic, prompt, cut_prompt, tiny_en):
    for name in ("conf-getconfno", "vm-reenterpassword"):
        head = cut_prompt(name)
        audio = with_silence(0.5, head, 1.2, prompt(name)[head.size:], 2.5)
        seen = drive(semantic, audio, tiny_en)
        final_pause = seen[-1][0].t_last_voiced
        assert final_pause > 0.5 + head.size / 16000 + 1.2, (name, seen)  # the turn ended after the pause
        in_pause = [v for c, v in seen if c.t_last_voiced < final_pause]
        assert in_pause and not any(v.end for v in in_pause)  # it was asked during the pause and said "not yet"


def test_scores_are_computed_once_per_pause(semantic, prompt):
    audio = with_silence(0.3, prompt("conf-getpin"), 0.16)
    first = semantic.score(PauseState(audio, 16000, 0.16, "Please enter the conference PIN number."))
    later = semantic.score(PauseState(with_silence(0.3, prompt("conf-getpin"), 0.7), 16000, 0.7,
                                      "Please enter the conference PIN number."))
    assert first == later  # same pause, same audio up to min_silence, same words: cached, not recomputed
    no_text = semantic.decide(PauseState(audio, 16000, 0.16, None))
    assert 0.0 <= no_text.probability <= 1.0


@pytest.mark.parametrize("kwargs", [
    {"end_threshold": 1.2}, {"speculate_threshold": 0.0}, {"end_threshold": 0.4, "speculate_threshold": 0.6},
    {"min_silence_ms": 0}, {"min_silence_ms": 800, "max_silence_ms": 600}, {"step_ms": -5},
    {"weights": {"bias": 1.0, "audio": 1.0}}, {"early_weights": {"bias": 0, "audio": float("nan"), "silence": 1}},
    {"weights": {"bias": 1.0, "audio": 1.0, "silence": 1.0, "punct": 1.0}},  # no turn.words to give the cue
    {"weights": {"bias": 1.0, "audio": 1.0, "silence": 1.0, "text": 1.0}},  # no turn.text
    {"weights": {"bias": 1.0, "audio": 1.0, "silence": 1.0, "volume": 1.0}},
    {"early_weights": {"bias": 1.0, "audio": 1.0, "silence": 1.0, "asr": 1.0}},  # the words are not there early
    {"early_threshold": 1.0},
])
def test_bad_config_values_are_rejected(smart_turn_model, kwargs):
    SemanticTurnDetector(smart_turn_model, None)  # the defaults are valid: each case below fails on its own value
    with pytest.raises(ConfigValueError):
        SemanticTurnDetector(smart_turn_model, None, **kwargs)


def test_presets_compose(compose):
    from omegaconf import OmegaConf

    def turn_node(preset: str) -> dict:
        return OmegaConf.to_container(compose([f"turn={preset}", "io.input=x.wav"]).turn, resolve=True)

    default = OmegaConf.to_container(compose(["io.input=x.wav"]).turn, resolve=True)
    assert default == turn_node("semantic")  # the default preset
    assert default["_target_"] == "fern.turn.semantic.SemanticTurnDetector" and default["text"] is None
    assert default["words"]["model"].startswith("package:") and default["weights"]["punct"] > 0
    assert "asr" not in default["weights"] and default["audio"]["path"].endswith(".onnx")
    asr = turn_node("semantic_asr")
    assert asr["words"] is None and asr["weights"]["asr"] > 0 and asr["min_silence_ms"] < asr["max_silence_ms"]
    assert default["min_silence_ms"] < asr["min_silence_ms"]
    with_lm = turn_node("semantic_lm")
    assert with_lm["text"]["gguf_file"].endswith(".gguf") and with_lm["weights"]["text"] > 0


def test_a_recogniser_without_confidence_leaves_the_audio_weights_in_charge(semantic):
    scores = {"audio": 0.9, "text": 0.2, "ellipsis": 0.0}
    assert semantic.weights.weights["asr"] != 0.0  # the calibrated combiner weighs the recogniser's confidence
    assert semantic.probability(scores, 0.3) == semantic.early_weights.probability_of(
        {"audio": logit(0.9), "silence": 0.3})
    sure, unsure = (semantic.probability(scores | {"asr": lp}, 0.3) for lp in (-0.1, -1.5))
    assert sure > unsure  # a recogniser that had to guess the words is a sign the sentence goes on


def test_an_early_threshold_holds_ends_back_until_the_words_are_there(smart_turn_model):
    detector = SemanticTurnDetector(smart_turn_model, None, end_threshold=0.9, early_threshold=0.999)
    audio_only = {"audio": 0.99}
    early = detector.rule(audio_only, 1.0)
    assert early.probability >= 0.9 and not early.end  # sure enough for end_threshold, not for early_threshold
    assert detector.stage(audio_only, 1.0)[0] is detector.early_weights
    words = detector.rule(audio_only | {"ellipsis": 0.0, "asr": -0.1}, 1.0)
    assert words.end and detector.stage(audio_only | {"ellipsis": 0.0, "asr": -0.1}, 1.0)[0] is detector.weights


def test_whisper_is_less_sure_of_fragments_than_of_whole_prompts(prompt, cut_prompt, tiny_en):
    whole = [tiny_en.transcribe_scored(with_silence(0.3, prompt(name), 0.16))[1] for name in CUTS]
    fragments = [tiny_en.transcribe_scored(with_silence(0.3, cut_prompt(name), 0.16))[1] for name in CUTS]
    assert all(np.isfinite(whole + fragments))
    assert np.mean(fragments) < np.mean(whole), (fragments, whole)


def test_semantic_lm_reads_words_with_the_reply_llms_weights(compose, smollm2):
    from fern.app import attach_text_model, build, text_model_shares_llm

    cfg = compose(["turn=semantic_lm", "io.input=x.wav"])
    assert text_model_shares_llm(cfg)
    turn = build(cfg.turn, "turn", text=None, reads_text=True)  # what run.py builds before the LLM is loaded
    attach_text_model(cfg, turn, smollm2)
    assert turn.text_model.model is smollm2.model  # one copy of the weights
    assert turn.text_model.probability("what time is it") > turn.text_model.probability("what time is the")
