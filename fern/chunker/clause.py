"""Clause chunker: turns the LLM's token stream into pieces the TTS can speak while the LLM goes on.

Rules (see tests/chunker for the table of tricky strings):
- A sentence end (. ! ? … or a newline) splits as soon as the character after it is known to be a space; a clause
  mark (, ; : – —) splits only once the chunk has ``first_min_words`` words (first chunk of a turn, for fast first
  audio) or ``min_words`` (later chunks, for natural prosody).
- A chunk longer than ``max_words`` is cut at a word boundary.
- Punctuation not followed by whitespace never splits, which keeps numbers (3.14, 1,000, 10:30), e-mail addresses,
  URLs and file names whole; a period after a known abbreviation (Mr., e.g., U.S., etc.) or a single initial (J.) or
  a list number ("1.") does not end a sentence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClauseChunkerConfig:
    """A short first clause gets audio out fast; later clauses are longer so the voice sounds natural."""

    _target_: str = "fern.chunker.clause.ClauseChunker"
    first_min_words: int = 3
    min_words: int = 6
    max_words: int = 30


SCHEMAS = {"chunker": {"clause": ClauseChunkerConfig}}

STRONG = ".!?…\n"
WEAK = ",;:–—"
CLOSERS = "\"'”’)]}»"
# Never a sentence end: titles and abbreviations that are normally followed by more of the same sentence.
ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "mt", "ft", "vs", "e.g", "i.e", "cf", "approx", "fig", "no",
    "nos", "vol", "ch", "sec", "dept", "est", "gen", "gov", "sen", "rep", "capt", "col", "lt", "sgt", "rev", "u.s",
    "u.k", "u.n", "e.u", "ph.d", "m.d", "b.a", "m.a", "b.sc", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun", "ave", "blvd", "rd", "inc", "ltd",
    "co", "corp", "etc", "a.m", "p.m",
}
# Abbreviations that often end a sentence: they split when the next word starts with a capital letter.
SENTENCE_FINAL_ABBREVIATIONS = {"etc", "a.m", "p.m", "inc", "ltd", "corp", "co"}


class ClauseChunker:
    def __init__(self, first_min_words: int = ClauseChunkerConfig.first_min_words,
                 min_words: int = ClauseChunkerConfig.min_words,
                 max_words: int = ClauseChunkerConfig.max_words) -> None:
        if not 1 <= first_min_words <= max_words or not 1 <= min_words <= max_words:
            raise ValueError(
                f"need 1 <= first_min_words, min_words <= max_words; got {first_min_words}, {min_words}, {max_words}"
            )
        self.first_min_words = first_min_words
        self.min_words = min_words
        self.max_words = max_words
        self._buf = ""
        self._scan = 0
        self._first = True

    # ---- protocol ----------------------------------------------------------------------------------------------
    def push(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                break
            if chunk:
                out.append(chunk)
                self._first = False
        return out

    def flush(self) -> list[str]:
        rest = self._buf.strip()
        self.reset()
        return [rest] if rest else []

    def reset(self) -> None:
        self._buf = ""
        self._scan = 0
        self._first = True

    # ---- internals ---------------------------------------------------------------------------------------------
    def _cut(self, end: int) -> str:
        chunk = self._buf[:end].strip()
        self._buf = self._buf[end:].lstrip()
        self._scan = 0
        return chunk

    def _next_chunk(self) -> str | None:
        buf = self._buf
        min_words = self.first_min_words if self._first else self.min_words
        i = self._scan
        n = len(buf)
        while i < n:
            c = buf[i]
            if c in STRONG or c in WEAK:
                j = i + 1
                while j < n and (buf[j] in CLOSERS or (c in ".!?…" and buf[j] in ".!?…")):
                    j += 1
                if j >= n:  # the next character decides; wait for more text
                    break
                if c == "\n" or buf[j].isspace():
                    words = len(buf[:j].split())
                    if c in STRONG:
                        end = True if c == "\n" else self._is_sentence_end(buf, i, j)
                        if end is None:  # depends on the next word, not here yet
                            break
                        if end and words >= 1:
                            return self._cut(j)
                    elif words >= min_words:
                        return self._cut(j)
                i = j
                continue
            i += 1
        self._scan = max(0, min(i, n))
        # Too long without a usable boundary: cut after max_words complete words.
        words = buf.split()
        complete = len(words) if (buf and buf[-1].isspace()) else len(words) - 1
        if complete > self.max_words:
            pos = 0
            for _ in range(self.max_words):
                while buf[pos].isspace():
                    pos += 1
                while not buf[pos].isspace():
                    pos += 1
            return self._cut(pos)
        return None

    def _is_sentence_end(self, buf: str, i: int, j: int) -> bool | None:
        if buf[i] != ".":
            return True
        if i + 1 < len(buf) and buf[i + 1] == ".":  # an ellipsis
            return True
        # The word the period ends.
        k = i
        while k > 0 and not buf[k - 1].isspace():
            k -= 1
        word = buf[k:i].lstrip("\"'“‘([{").lower()
        if not word:
            return True
        if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien"
            return False
        if word.isdigit() and len(buf[:k].split()) == 0:  # a list number at the start of a chunk: "1. Preheat"
            return False
        if word in ABBREVIATIONS:
            if word in SENTENCE_FINAL_ABBREVIATIONS:
                nxt = buf[j:].lstrip()
                return nxt[0].isupper() if nxt else None
            return False
        return True
