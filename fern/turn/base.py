"""The end-of-turn contract: a pause in the user's speech, and a detector that says whether it ends the turn.

The listener does the segmentation (VAD frames -> speech start, pause, resume); a TurnDetector only judges pauses.
At every silence duration in ``checkpoints_s`` (ascending; the last one ends the turn whatever the verdict) the
listener hands the detector a PauseState and acts on its Verdict. A detector that reads words sets
``needs_transcript``: the listener then has the utterance so far recognised at the first checkpoint and passes the
text in as soon as it exists (``transcript`` is None until then). The same contract drives the offline turn
benchmark (fern.bench.turns), so what is measured there is what runs live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class PauseState:
    audio: np.ndarray  # float32 mono at ``sample_rate``: the turn so far (pre-roll included), ending now
    sample_rate: int
    silence_s: float  # time since the last voiced frame
    transcript: str | None = None  # ASR of the turn up to the pause; None until it is ready
    transcript_logprob: float = float("nan")  # the recogniser's mean log-probability per token of ``transcript``


@dataclass(frozen=True)
class Verdict:
    end: bool  # the turn is over: answer now
    probability: float = float("nan")  # P(turn complete) as the detector saw it (nan: it did not score)
    speculate: bool = False  # likely over: a reply may be prepared (never played) before the turn is confirmed
    words: str | None = None  # the turn so far as the detector's own recogniser read it, for one that reads it


@runtime_checkable
class TurnDetector(Protocol):
    speech_start_ms: int  # voiced time before a turn starts (debounces clicks)
    min_speech_ms: int  # shorter voiced turns are dropped (coughs, door slams)
    checkpoints_s: Sequence[float]  # silence durations at which decide() is called; the turn ends at the last
    needs_transcript: bool

    def decide(self, state: PauseState) -> Verdict: ...
