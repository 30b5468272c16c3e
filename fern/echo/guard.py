"""Self-speech guard: is what the recogniser heard during playback the agent's own words coming back?

An echo canceller leaves some echo through (double talk, a changed room, a loud speaker). When the VAD fires during
playback and the ASR transcribes it, compare the transcript with the text the agent is saying: if most of the
recognised words appear, in order, in the agent's current text, it is the agent hearing itself, not a barge-in.

Matching: both texts are normalised (lower case, punctuation and hyphens dropped, digits kept); the score is the
share of recognised words that can be aligned, in order, to the agent's words (longest common subsequence), where
two words match when equal or nearly equal (difflib ratio >= 0.8, so "colour"/"color", "its"/"it's" match). A
transcript of the agent's words scores ~1.0, a user's unrelated sentence ~0 to 0.3.

Measured with tiny.en on espeak speech of two clauses, whole and cut into halves/thirds as echo arrives: 0.50-1.00
(ASR garbles echo: "a city on the river Seine" -> "I see the on the river saying" scores 0.57); on five real user
prompts: 0.00-0.14. Hence the default threshold 0.4 (tests/echo/test_guard.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from difflib import SequenceMatcher

_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return [w.replace("'", "") for w in _WORD.findall(text.lower().replace("-", " "))]


def _same(a: str, b: str) -> bool:
    return a == b or (len(a) > 2 and len(b) > 2 and SequenceMatcher(None, a, b).ratio() >= 0.8)


def self_speech_score(recognised: str, agent_text: str | Iterable[str]) -> float:
    """Share (0..1) of the recognised words found, in order, in what the agent is saying. ``agent_text`` may be
    one string or the clauses being played (joined in order). An empty transcript scores 0."""
    heard = _words(recognised)
    if not heard:
        return 0.0
    said = _words(agent_text if isinstance(agent_text, str) else " ".join(agent_text))
    if not said:
        return 0.0
    # LCS with fuzzy equality; O(len(heard) * len(said)), both a clause or two long
    prev = [0] * (len(said) + 1)
    for h in heard:
        cur = [0] * (len(said) + 1)
        for j, s in enumerate(said, 1):
            cur[j] = prev[j - 1] + 1 if _same(h, s) else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1] / len(heard)


def is_self_speech(recognised: str, agent_text: str | Iterable[str], threshold: float = 0.4,
                   min_words: int = 1) -> bool:
    """True when the transcript is (mostly) the agent's own words: do not treat it as a barge-in.

    ``agent_text``: the clause(s) playing while the audio was captured (include the previous clause too: echo
    arrives late). Transcripts with fewer than ``min_words`` words are never called self-speech."""
    words = _words(recognised)
    return len(words) >= min_words and self_speech_score(recognised, agent_text) >= threshold
