"""``turn=semantic`` (and ``semantic_asr``, ``semantic_lm``): end the turn at the first short silence when the sound
and the words agree it is over, otherwise keep listening and re-score as the silence grows.

At every checkpoint (``min_silence_ms``, then every ``step_ms`` up to ``max_silence_ms``, where the turn ends
whatever) the detector scores the turn so far. Each pause is judged once, on the turn up to ``min_silence_ms`` into
it (more trailing silence makes the models less accurate; the silence is a separate input), and cached:
- audio: Smart Turn v3.2's P(complete) (~50 ms on one CPU thread here);
- ``words`` (turn=semantic, the default): Whisper's own reading of the pause (fern.turn.whisper_eot): how surely it
  would end the words it hears with a full stop, how flat its next-token distribution is, how sure it is of the
  words (~110 ms on one CPU thread with the 8 s window; Smart Turn runs beside it, ``parallel``). The detector runs
  it itself, so it does not wait for the reply's ASR, which can be any preset; its verdicts carry the words it read
  (``listener.reply_words=detector`` answers from them);
- without ``words`` (turn=semantic_asr): the reply ASR's transcript of the pause, once it is there (the listener
  starts it at the first checkpoint): its confidence (mean log-probability per token) and whether it ends with
  Whisper's "...";
- ``text`` (turn=semantic_lm): P(end of message | words) from a causal LM (fern.turn.text_eot).
A learned combiner turns them into P(turn over): logistic regression over the inputs its ``weights`` name (any of
logit P_audio, the words' cues, log10 P_text, silence_s), with a second set, ``early_weights``, for checkpoints
before a transcript the weights need exists (audio, silence and what the detector computes itself), which may end
the turn only at ``early_threshold`` (default: ``end_threshold``). Both were fitted on the training split of
fern.bench.turns (``python -m fern.bench.turns --calibrate``), never on the held-out third; the weights are config
values. The turn ends when P(turn over) >= ``end_threshold``; ``speculate`` is set from ``speculate_threshold`` (a
reply may be prepared, never played, until the end is confirmed).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Dict, Optional

import numpy as np

from fern.errors import ConfigValueError
from fern.turn.base import PauseState, Verdict
from fern.turn.smart_turn import SmartTurnModel, SmartTurnModelConfig, silence_checkpoints
from fern.turn.text_eot import TextEndOfTurnConfig, TextEndOfTurnModel
from fern.turn.whisper_eot import WhisperEndOfTurnConfig, WhisperEndOfTurnModel

_EPS = 1e-6


def logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def log10_clamped(p: float, floor: float = -8.0) -> float:
    return max(math.log10(max(p, 1e-30)), floor)


# Where each of the combiner's inputs comes from, and how a score becomes that input.
AUDIO_FEATURES = ("audio", "silence")  # Smart Turn's logit(P_audio), and seconds of silence so far
WORDS_CUES = ("punct", "entropy", "logprob", "last")  # turn.words: Whisper's own reading of the pause
TRANSCRIPT_CUES = ("ellipsis", "asr")  # the reply ASR's words: a trailing "..." and its mean log-probability
TEXT_FEATURES = ("text",)  # turn.text: log10 P(end of message | words) from a causal LM
FEATURES = AUDIO_FEATURES + WORDS_CUES + TRANSCRIPT_CUES + TEXT_FEATURES


def feature_values(scores: dict[str, float], silence_s: float) -> dict[str, float]:
    """The combiner's inputs from a detector's raw scores: probabilities become log-odds (audio) or log10 (text)."""
    values = {"silence": silence_s}
    for name, score in scores.items():
        values[name] = logit(score) if name == "audio" else log10_clamped(score) if name == "text" else score
    return values


@dataclass
class CombinerWeights:
    """A logistic model: P(turn over) = sigmoid(bias + sum of weight * input) over the inputs it names."""

    bias: float
    weights: dict[str, float]

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(name for name in FEATURES if name in self.weights)

    def probability_of(self, values: dict[str, float]) -> float:
        z = self.bias + sum(w * values[name] for name, w in self.weights.items())
        return 1.0 / (1.0 + math.exp(-min(max(z, -60.0), 60.0)))

    def as_dict(self) -> dict[str, float]:
        return {"bias": self.bias, **self.weights}


# Fitted by `python -m fern.bench.turns --calibrate` on the training split (never on the held-out third).
# turn=semantic_asr: the reply ASR's words (its confidence, a trailing "..."), asr=whisper_tiny_en_offline
ASR_WEIGHTS = {"bias": 3.4886, "audio": 0.7725, "ellipsis": -5.4141, "asr": 10.0447, "silence": 1.9119}
# turn=semantic (turn.words: Whisper's own reading of the pause; conf/turn/semantic.yaml)
WORDS_WEIGHTS = {"bias": 2.2989, "audio": 0.5406, "punct": 0.8901, "entropy": -0.8654, "logprob": 3.9915,
                 "last": 0.3967, "silence": 2.0043}
DEFAULT_EARLY_WEIGHTS = {"bias": -0.311, "audio": 0.7777, "silence": 1.6174}  # turn=semantic_asr's
# (turn=semantic_lm's weights are in conf/turn/semantic_lm.yaml)


class SemanticTurnDetector:
    def __init__(self, audio: SmartTurnModel, text: TextEndOfTurnModel | None = None,
                 words: WhisperEndOfTurnModel | None = None, min_silence_ms: int = 160,
                 step_ms: int = 96, max_silence_ms: int = 1600, end_threshold: float = 0.98,
                 speculate_threshold: float = 0.3, weights: dict | None = None,
                 early_weights: dict | None = None, early_threshold: float | None = None,
                 min_speech_ms: int = 200, speech_start_ms: int = 60, reads_text: bool | None = None,
                 parallel: bool = True) -> None:
        for name, value in (("end_threshold", end_threshold), ("speculate_threshold", speculate_threshold),
                            ("early_threshold", 0.5 if early_threshold is None else early_threshold)):
            if not 0.0 < value < 1.0:
                raise ConfigValueError(f"turn.{name}={value} must be in (0, 1)")
        if speculate_threshold > end_threshold:
            raise ConfigValueError(f"turn.speculate_threshold={speculate_threshold} must be <= "
                                   f"end_threshold={end_threshold}")
        self.audio_model = audio
        self.words_model = words
        self.checkpoints_s = silence_checkpoints(min_silence_ms, step_ms, max_silence_ms)
        self.min_speech_ms, self.speech_start_ms = min_speech_ms, speech_start_ms
        self.end_threshold, self.speculate_threshold = end_threshold, speculate_threshold
        # a text model may be attached after construction (sharing the reply LLM's weights): reads_text says one
        # will be, so that weights on "text" are valid now
        self.text_model = text
        self._reads_text = text is not None if reads_text is None else reads_text
        if weights is None:
            weights = WORDS_WEIGHTS if words is not None else ASR_WEIGHTS
        self.weights = self._weights("weights", weights, self._available())
        # before the reply ASR's words exist: audio, silence and what the detector computes itself
        self.early_weights = self._weights(
            "early_weights", DEFAULT_EARLY_WEIGHTS if early_weights is None else early_weights,
            self._available() - set(TRANSCRIPT_CUES) - (set(TEXT_FEATURES) if words is None else set()))
        self.early_threshold = early_threshold
        # the reply ASR's transcript is read only where the weights use it (or the LM reads its words)
        self.needs_transcript = bool(set(self.weights.features) & set(TRANSCRIPT_CUES)) or (
            self._reads_text and words is None)
        # Smart Turn in a second thread while Whisper reads the pause: both hold the GIL little (onnxruntime and
        # CTranslate2 release it), so a pause's first verdict costs the slower of the two, not their sum
        self._audio_lane: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="fern-smart-turn") if parallel and words else None)
        self._text_cache: tuple[str, float] | None = None
        self._audio_cache: tuple[tuple, float] | None = None
        self._words_cache: tuple[tuple, tuple[str, dict[str, float]]] | None = None

    def _available(self) -> set[str]:
        available = set(AUDIO_FEATURES) | set(TRANSCRIPT_CUES)
        if self.words_model is not None:
            available |= set(WORDS_CUES)
        if self._reads_text:
            available |= set(TEXT_FEATURES)
        return available

    def attach_text_model(self, text: TextEndOfTurnModel) -> None:
        """Score the words with ``text`` from now on (built without it so that it can share the reply LLM's
        weights)."""
        self.text_model = text
        self._text_cache = None

    @staticmethod
    def _weights(name: str, values: dict, available: set[str]) -> CombinerWeights:
        values = dict(values)
        unknown = set(values) - {"bias"} - set(FEATURES)
        unavailable = (set(values) & set(FEATURES)) - available
        missing = {"bias", "audio", "silence"} - set(values)
        if unknown or missing or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values.values()):
            raise ConfigValueError(f"turn.{name} needs finite numbers for bias, audio, silence and any of "
                                   f"{sorted(set(FEATURES) - set(AUDIO_FEATURES))}, got {values}")
        if unavailable:
            raise ConfigValueError(f"turn.{name} weighs {sorted(unavailable)}, which this detector does not compute "
                                   f"(turn.words gives {list(WORDS_CUES)}, turn.text gives 'text')")
        bias = float(values.pop("bias"))
        return CombinerWeights(bias, {k: float(v) for k, v in values.items()})

    def text_probability(self, transcript: str) -> float:
        if self._text_cache is None or self._text_cache[0] != transcript:
            self._text_cache = (transcript, self.text_model.probability(transcript))
        return self._text_cache[1]

    def _first_checkpoint_clip(self, state: PauseState) -> np.ndarray:
        """The turn up to ``min_silence`` into this pause: the audio models judge each pause once, there (more
        trailing silence makes them less accurate, not more; the silence is a separate input of the combiner)."""
        voiced_end = max(0, state.audio.size - int(round(state.silence_s * state.sample_rate)))
        return state.audio[:min(state.audio.size, voiced_end + int(round(self.checkpoints_s[0] * state.sample_rate)))]

    @staticmethod
    def _key(clip: np.ndarray, sample_rate: int) -> tuple:
        return clip.size, sample_rate, hash(clip[-4000:].tobytes())

    def audio_probability(self, state: PauseState) -> float:
        clip = self._first_checkpoint_clip(state)
        key = self._key(clip, state.sample_rate)
        if self._audio_cache is None or self._audio_cache[0] != key:
            self._audio_cache = (key, self.audio_model.probability(clip, state.sample_rate))
        return self._audio_cache[1]

    def words_cues(self, state: PauseState) -> tuple[str, dict[str, float]]:
        """Whisper's words and cues on the same clip as the audio model, once per pause."""
        clip = self._first_checkpoint_clip(state)
        key = self._key(clip, state.sample_rate)
        if self._words_cache is None or self._words_cache[0] != key:
            self._words_cache = (key, self.words_model.cues(clip, state.sample_rate))
        return self._words_cache[1]

    def score(self, state: PauseState) -> dict[str, float]:
        return self._read(state)[1]

    def _read(self, state: PauseState) -> tuple[str | None, dict[str, float]]:
        """(the words turn.words read, None without it; the scores)."""
        audio = self._audio_lane.submit(self.audio_probability, state) if self._audio_lane is not None else None
        read, cues = self.words_cues(state) if self.words_model is not None else (None, {})
        scores = {"audio": audio.result() if audio is not None else self.audio_probability(state), **cues}
        words = read
        if state.transcript is not None:
            scores["ellipsis"] = float(state.transcript.rstrip().endswith(("...", "\u2026")))
            if math.isfinite(state.transcript_logprob):
                scores["asr"] = state.transcript_logprob
            words = state.transcript if words is None else words
        if self.text_model is not None and words is not None:
            scores["text"] = self.text_probability(words)
        return read, scores

    def stage(self, scores: dict[str, float], silence_s: float, threshold: float | None = None):
        """(weights, threshold, inputs): ``weights`` once every input they weigh is there, else ``early_weights``
        (a transcript not yet ready, or a recogniser that gives no confidence) with ``early_threshold`` (default:
        the same threshold). ``threshold`` overrides end_threshold (the benchmark's sweeps)."""
        values = feature_values(scores, silence_s)
        limit = self.end_threshold if threshold is None else threshold
        if all(name in values for name in self.weights.features):
            return self.weights, limit, values
        return self.early_weights, limit if self.early_threshold is None else self.early_threshold, values

    def probability(self, scores: dict[str, float], silence_s: float) -> float:
        weights, _, values = self.stage(scores, silence_s)
        return weights.probability_of(values)

    def rule(self, scores: dict[str, float], silence_s: float, threshold: float | None = None) -> Verdict:
        weights, limit, values = self.stage(scores, silence_s, threshold)
        p = weights.probability_of(values)
        end = p >= limit
        return Verdict(end=end, probability=p, speculate=end or p >= self.speculate_threshold)

    def decide(self, state: PauseState) -> Verdict:
        read, scores = self._read(state)
        return replace(self.rule(scores, state.silence_s), words=read)


@dataclass
class SemanticTurnConfig:
    _target_: str = "fern.turn.semantic.SemanticTurnDetector"
    audio: SmartTurnModelConfig = field(default_factory=SmartTurnModelConfig)
    text: Optional[TextEndOfTurnConfig] = None  # a causal LM's P(end of message | words); turn=semantic_lm sets it
    words: Optional[WhisperEndOfTurnConfig] = None  # Whisper's own reading of the pause (fern.turn.whisper_eot)
    min_silence_ms: int = 160  # first checkpoint (the listener starts ASR here)
    step_ms: int = 96  # re-score every step_ms of further silence
    max_silence_ms: int = 1600  # the turn ends here whatever
    end_threshold: float = 0.98  # P(turn over) that ends the turn (calibrated: <= 2 % cut-offs on train)
    speculate_threshold: float = 0.3  # P(turn over) from which a reply may be prepared (never played)
    # the combiner's weights, over the inputs it uses: bias, audio, silence and any of the words' cues (each preset
    # sets all of its own; null: WORDS_WEIGHTS with turn.words, else ASR_WEIGHTS)
    weights: Optional[Dict[str, float]] = None
    # before the reply ASR's transcript exists: audio, silence and (with turn.words) Whisper's own cues
    early_weights: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EARLY_WEIGHTS))
    early_threshold: Optional[float] = None  # null: end_threshold
    min_speech_ms: int = 200
    speech_start_ms: int = 60
    parallel: bool = True  # with turn.words: Smart Turn in a second thread while Whisper reads the pause


SCHEMAS: dict[str, dict[str, type]] = {"turn": {"semantic": SemanticTurnConfig}}
