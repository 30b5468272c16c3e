"""``turn=semantic``: end the turn at the first short silence when audio and words agree it is over, otherwise keep
listening and re-score as the silence grows.

At every checkpoint (``min_silence_ms``, then every ``step_ms`` up to ``max_silence_ms``, where the turn ends
whatever) the detector scores the turn so far:
- audio: Smart Turn v3.2's P(complete) on the audio up to ``min_silence_ms`` into the pause (~25-45 ms on one CPU
  thread), computed at the first checkpoint and reused at the later ones of the same pause (with more trailing
  silence the model gets less accurate; the silence is a separate input);
- words: once the transcript of the turn so far is there (the listener starts ASR at the first checkpoint), the
  recogniser's confidence (mean log-probability per token: Whisper tends to finish a fragment it hears, "Press 7 to"
  -> "Press 7 to the", but less surely), whether it ended the words with "..." (its mark of a fragment that trails
  off), and, with a ``text`` model, P(end of message | words) from a causal LM (fern.turn.text_eot), computed once
  per pause and cached.
A learned combiner turns them into P(turn over): logistic regression on [logit P_audio, log10 P_text, ellipsis,
ASR log-probability, silence_s], with a second set of weights for checkpoints before the transcript exists (and for
recognisers that give no confidence): [logit P_audio, silence_s]. Both were
fitted on the training split of fern.bench.turns (``python -m fern.bench.turns --calibrate``), never on the held-out
third; the weights are config values. The turn ends when P(turn over) >= ``end_threshold``; ``speculate`` is set from
``speculate_threshold`` (a reply may be prepared, never played, until the end is confirmed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

from fern.errors import ConfigValueError
from fern.turn.base import PauseState, Verdict
from fern.turn.smart_turn import SmartTurnModel, SmartTurnModelConfig, silence_checkpoints
from fern.turn.text_eot import TextEndOfTurnConfig, TextEndOfTurnModel

_EPS = 1e-6


def logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def log10_clamped(p: float, floor: float = -8.0) -> float:
    return max(math.log10(max(p, 1e-30)), floor)


@dataclass
class CombinerWeights:
    bias: float
    audio: float  # on logit(P_audio)
    silence: float  # per second of silence
    text: float = 0.0  # on log10(P_text)
    ellipsis: float = 0.0  # the recogniser ended the words with "..." (Whisper's mark of a trailing-off fragment)
    asr: float = 0.0  # on the recogniser's mean log-probability per token of the words

    def probability(self, p_audio: float, silence_s: float, p_text: float | None = None, ellipsis: float = 0.0,
                    asr_logprob: float = 0.0) -> float:
        z = self.bias + self.audio * logit(p_audio) + self.silence * silence_s
        z += self.ellipsis * ellipsis + self.asr * asr_logprob
        if p_text is not None:
            z += self.text * log10_clamped(p_text)
        return 1.0 / (1.0 + math.exp(-z))


# Fitted by `python -m fern.bench.turns --calibrate --sample 240` on the training split (240 seeded cases, ~5000
# decisions, target <= 2 % cut-offs on train) with asr=whisper_tiny_en_offline: 1.96 % at 640 ms median on train.
DEFAULT_WEIGHTS = {"bias": 2.1502, "audio": 0.5691, "text": 0.0, "ellipsis": -0.8786, "asr": 8.7307,
                   "silence": 1.8801}
DEFAULT_AUDIO_ONLY_WEIGHTS = {"bias": -0.4788, "audio": 0.6213, "silence": 1.8831}
# (turn=semantic_lm's weights are in conf/turn/semantic_lm.yaml)



class SemanticTurnDetector:
    needs_transcript = True

    def __init__(self, audio: SmartTurnModel, text: TextEndOfTurnModel | None, min_silence_ms: int = 160,
                 step_ms: int = 96, max_silence_ms: int = 1600, end_threshold: float = 0.98,
                 speculate_threshold: float = 0.3, weights: dict | None = None,
                 audio_only_weights: dict | None = None, min_speech_ms: int = 200,
                 speech_start_ms: int = 60) -> None:
        for name, value in (("end_threshold", end_threshold), ("speculate_threshold", speculate_threshold)):
            if not 0.0 < value < 1.0:
                raise ConfigValueError(f"turn.{name}={value} must be in (0, 1)")
        if speculate_threshold > end_threshold:
            raise ConfigValueError(f"turn.speculate_threshold={speculate_threshold} must be <= "
                                   f"end_threshold={end_threshold}")
        self.audio_model = audio
        self.text_model = text
        self.checkpoints_s = silence_checkpoints(min_silence_ms, step_ms, max_silence_ms)
        self.min_speech_ms, self.speech_start_ms = min_speech_ms, speech_start_ms
        self.end_threshold, self.speculate_threshold = end_threshold, speculate_threshold
        self.weights = self._weights("weights", DEFAULT_WEIGHTS if weights is None else weights, with_text=True)
        self.audio_only_weights = self._weights(
            "audio_only_weights", DEFAULT_AUDIO_ONLY_WEIGHTS if audio_only_weights is None else audio_only_weights,
            with_text=False)
        self.needs_transcript = True  # the words' end, Whisper's "..." and its confidence; the LM only if ``text``
        self._text_cache: tuple[str, float] | None = None
        self._audio_cache: tuple[tuple, float] | None = None

    def attach_text_model(self, text: TextEndOfTurnModel) -> None:
        """Score the words with ``text`` from now on (built without it so that it can share the reply LLM's
        weights)."""
        self.text_model = text
        self._text_cache = None

    @staticmethod
    def _weights(name: str, values: dict, with_text: bool) -> CombinerWeights:
        keys = {"bias", "audio", "silence"} | ({"text", "ellipsis", "asr"} if with_text else set())
        values = dict(values)
        if set(values) != keys or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values.values()):
            raise ConfigValueError(f"turn.{name} needs finite numbers for exactly {sorted(keys)}, got {values}")
        return CombinerWeights(**{k: float(v) for k, v in values.items()})

    def text_probability(self, transcript: str) -> float:
        if self._text_cache is None or self._text_cache[0] != transcript:
            self._text_cache = (transcript, self.text_model.probability(transcript))
        return self._text_cache[1]

    def audio_probability(self, state: PauseState) -> float:
        """Smart Turn on the turn up to ``min_silence`` into this pause, computed once per pause: more trailing
        silence makes it less accurate, not more (the silence itself is a separate input of the combiner)."""
        voiced_end = max(0, state.audio.size - int(round(state.silence_s * state.sample_rate)))
        clip = state.audio[:min(state.audio.size, voiced_end + int(round(self.checkpoints_s[0] * state.sample_rate)))]
        key = (clip.size, state.sample_rate, hash(clip[-4000:].tobytes()))
        if self._audio_cache is None or self._audio_cache[0] != key:
            self._audio_cache = (key, self.audio_model.probability(clip, state.sample_rate))
        return self._audio_cache[1]

    def score(self, state: PauseState) -> dict[str, float]:
        scores = {"audio": self.audio_probability(state)}
        if state.transcript is not None:
            scores["ellipsis"] = float(state.transcript.rstrip().endswith(("...", "\u2026")))
            if math.isfinite(state.transcript_logprob):
                scores["asr"] = state.transcript_logprob
            if self.text_model is not None:
                scores["text"] = self.text_probability(state.transcript)
        return scores

    def probability(self, scores: dict[str, float], silence_s: float) -> float:
        """The word-aware weights once the transcript is there (and, where they weigh it, the recogniser's
        confidence: a recogniser that gives none leaves the audio-only weights in charge), else audio + silence."""
        words = "ellipsis" in scores and (self.weights.asr == 0.0 or "asr" in scores)
        if words and (self.text_model is None or "text" in scores):
            return self.weights.probability(scores["audio"], silence_s, scores.get("text"), scores["ellipsis"],
                                            scores.get("asr", 0.0))
        return self.audio_only_weights.probability(scores["audio"], silence_s)

    def rule(self, scores: dict[str, float], silence_s: float, threshold: float | None = None) -> Verdict:
        p = self.probability(scores, silence_s)
        end = p >= (self.end_threshold if threshold is None else threshold)
        return Verdict(end=end, probability=p, speculate=end or p >= self.speculate_threshold)

    def decide(self, state: PauseState) -> Verdict:
        return self.rule(self.score(state), state.silence_s)


@dataclass
class SemanticTurnConfig:
    _target_: str = "fern.turn.semantic.SemanticTurnDetector"
    audio: SmartTurnModelConfig = field(default_factory=SmartTurnModelConfig)
    text: Optional[TextEndOfTurnConfig] = None  # a causal LM's P(end of message | words); turn=semantic_lm sets it
    min_silence_ms: int = 160  # first checkpoint (the listener starts ASR here)
    step_ms: int = 96  # re-score every step_ms of further silence
    max_silence_ms: int = 1600  # the turn ends here whatever
    end_threshold: float = 0.98  # P(turn over) that ends the turn (calibrated: <= 2 % cut-offs on train)
    speculate_threshold: float = 0.3  # P(turn over) from which a reply may be prepared (never played)
    weights: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    audio_only_weights: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_AUDIO_ONLY_WEIGHTS))
    min_speech_ms: int = 200
    speech_start_ms: int = 60


SCHEMAS: dict[str, dict[str, type]] = {"turn": {"semantic": SemanticTurnConfig}}
