"""Word boundaries by forced alignment (pocketsphinx's bundled US-English acoustic model and CMU dictionary, offline).

Whisper's word timestamps come from cross-attention, not from the acoustics, and on the asterisk prompts they run late
by up to ~200 ms at a word onset: a cut "after 'the'" at Whisper's boundary kept "pou" of "pound", and Whisper then
read the fragment as "... followed by the panel." An HMM aligner places each word on 10 ms frames against its
phones, so a cut between its words is a cut between words.

The words come from the recogniser's transcript (they are what was said); each is spelt as dictionary tokens:
digits as number words (num2words), hyphenated and closed compounds as their parts, short acronyms letter by letter.
A word that cannot be spelt makes the prompt unalignable (``None``), and the caller leaves it out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
FRAME_S = 0.01  # pocketsphinx's frame rate: 100 frames per second


@dataclass(frozen=True)
class AlignedWord:
    word: str  # as the recogniser wrote it
    start: float  # seconds
    end: float


class WordAligner:
    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=SAMPLE_RATE, bestpath=False, loglevel="ERROR")

    def _known(self, token: str) -> bool:
        return bool(token) and self._decoder.lookup_word(token) is not None

    def _number_words(self, token: str) -> list[str] | None:
        from num2words import num2words

        match = re.fullmatch(r"(\d{1,4})(st|nd|rd|th)?", token)
        if not match:
            return None
        text = num2words(int(match[1]), to="ordinal" if match[2] else "cardinal")
        return re.sub(r"[^a-z' ]", " ", text.lower()).split()

    def _compound(self, token: str) -> list[str] | None:
        for cut in range(len(token) - 2, 1, -1):  # the longest first part that leaves a word of 2+ letters
            if self._known(token[:cut]) and self._known(token[cut:]):
                return [token[:cut], token[cut:]]
        return None

    def spell(self, word: str) -> list[str] | None:
        """Dictionary tokens for one recogniser word, or None."""
        token = re.sub(r"[^a-z0-9'\-]", "", word.lower()).strip("'-")
        if not token:
            return []
        if self._known(token):
            return [token]
        if "-" in token:
            if self._known(token.replace("-", "")):
                return [token.replace("-", "")]
            parts = [self.spell(p) for p in token.split("-") if p]
            return None if any(p is None for p in parts) else [t for p in parts for t in p]
        if token[0].isdigit():
            return self._number_words(token)
        if self._compound(token):
            return self._compound(token)
        if len(token) <= 4 and all(self._known(c) for c in token):
            return list(token)
        return None

    def align(self, audio: np.ndarray, words: list[str]) -> list[AlignedWord] | None:
        """Each word's [start, end) in ``audio`` (16 kHz mono float), or None when a word cannot be spelt or the
        aligner does not return the tokens it was given."""
        spelt = [self.spell(w) for w in words]
        if any(s is None for s in spelt) or not any(spelt):
            return None
        tokens = [t for s in spelt for t in s]
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        decoder = self._decoder
        decoder.set_align_text(" ".join(tokens))
        decoder.start_utt()  # first pass: the words
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        if decoder.hyp() is None:
            return None
        decoder.set_alignment()  # second pass: their frames
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        segments = [(re.sub(r"\(\d+\)$", "", w.name), w.start, w.start + w.duration)
                    for w in decoder.get_alignment() if not w.name.startswith(("<", "["))]
        if [s[0] for s in segments] != tokens:
            return None
        out, k = [], 0
        for word, parts in zip(words, spelt):
            if not parts:  # punctuation alone: no time of its own
                continue
            first, last = segments[k], segments[k + len(parts) - 1]
            out.append(AlignedWord(word, round(first[1] * FRAME_S, 2), round(last[2] * FRAME_S, 2)))
            k += len(parts)
        return out
