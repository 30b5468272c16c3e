"""VAD decisions -> speech start, pause checkpoints, resumption: the bookkeeping every turn detector shares.

The segmenter owns no model. It tells its caller when the user started talking, when a pause has lasted one of the
detector's ``checkpoints_s`` (the caller then asks the detector, now or when a transcript is ready, and calls
``end_turn`` on a yes), and when speech resumed (everything prepared for that pause is void). The listener drives it
live; fern.bench.turns drives it over recorded audio, so both see the same pauses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fern.errors import ConfigValueError


@dataclass(frozen=True)
class SpeechStart:
    t: float  # when the first voiced frame of the turn began


@dataclass(frozen=True)
class Checkpoint:
    t: float  # now: the end of the frame at which the silence reached the checkpoint
    index: int  # which checkpoint of the detector (0 = the first, shortest)
    silence_s: float
    t_start: float
    t_last_voiced: float
    last: bool  # the final checkpoint: the turn ends whatever the detector says


@dataclass(frozen=True)
class Resume:
    t: float
    pause_s: float  # how long the pause that just ended lasted


@dataclass(frozen=True)
class TurnBounds:
    t_start: float
    t_last_voiced: float
    t_end: float


class Segmenter:
    def __init__(self, checkpoints_s: Sequence[float], speech_start_ms: int = 60, min_speech_ms: int = 200) -> None:
        points = [float(c) for c in checkpoints_s]
        if not points or points[0] <= 0 or any(b <= a for a, b in zip(points, points[1:])):
            raise ConfigValueError(f"turn checkpoints must be positive and ascending, got {list(checkpoints_s)}")
        self.checkpoints_s = points
        self.speech_start_s = speech_start_ms / 1000
        self.min_speech_s = min_speech_ms / 1000
        self.reset()

    def reset(self) -> None:
        self._voiced_run_s = 0.0  # consecutive voiced time while not yet in a turn
        self.in_turn = False
        self.t_start = 0.0
        self.t_last_voiced = 0.0
        self.speech_s = 0.0
        # silence since the last voiced frame, counted in frames of audio: arrival stamps jitter with the capture
        # thread's scheduling (tens of ms on a busy CPU), and a checkpoint missed by a millisecond costs a frame
        self.silence_s = 0.0
        self._next_checkpoint = 0
        self.pauses: list[tuple[float, float]] = []  # (start, end) of the turn's pauses the user spoke after

    @property
    def paused(self) -> bool:
        """In a turn, and at least the first checkpoint of the current pause has been reached."""
        return self.in_turn and self._next_checkpoint > 0

    def push(self, t_frame_end: float, frame_s: float, is_speech: bool) -> SpeechStart | Checkpoint | Resume | None:
        if not self.in_turn:
            if not is_speech:
                self._voiced_run_s = 0.0
                return None
            self._voiced_run_s += frame_s
            if self._voiced_run_s + 1e-9 < self.speech_start_s:
                return None
            self.in_turn = True
            self.t_start = t_frame_end - self._voiced_run_s
            self.speech_s = self._voiced_run_s
            self.t_last_voiced = t_frame_end
            return SpeechStart(self.t_start)
        if is_speech:
            resumed = self._next_checkpoint > 0
            pause_s = self.silence_s
            if resumed:
                self.pauses.append((self.t_last_voiced, t_frame_end - frame_s))
            self.speech_s += frame_s
            self.t_last_voiced = t_frame_end
            self.silence_s = 0.0
            self._next_checkpoint = 0
            return Resume(t_frame_end, pause_s) if resumed else None
        self.silence_s += frame_s
        silence_s = self.silence_s
        if self._next_checkpoint >= len(self.checkpoints_s):
            return None  # the last checkpoint passed and the caller has not ended the turn yet
        if silence_s + 1e-9 < self.checkpoints_s[self._next_checkpoint]:
            return None
        if self.speech_s + 1e-9 < self.min_speech_s:
            self.reset()  # a click or a cough, not a turn: no detector is asked about it
            return None
        index = self._next_checkpoint
        self._next_checkpoint += 1
        return Checkpoint(t=t_frame_end, index=index, silence_s=silence_s, t_start=self.t_start,
                          t_last_voiced=self.t_last_voiced, last=index == len(self.checkpoints_s) - 1)

    def end_turn(self, t_end: float) -> TurnBounds | None:
        """Close the current turn at ``t_end``; None when its speech was too short to be a turn (it is dropped)."""
        if not self.in_turn:
            return None
        bounds = TurnBounds(self.t_start, self.t_last_voiced, t_end)
        long_enough = self.speech_s + 1e-9 >= self.min_speech_s
        self.reset()
        return bounds if long_enough else None


def squeeze_pauses(audio: np.ndarray, sample_rate: int, t0: float, pauses: Sequence[tuple[float, float]],
                   keep_s: float) -> np.ndarray:
    """``audio`` (starting at time ``t0``) with each pause in ``pauses`` longer than ``keep_s`` shortened to
    ``keep_s``, half of it kept at each edge. Whisper, reading a turn with a second of silence inside, often stops at
    the silence ("... followed by the" for "... followed by the | pound key."): the words model then takes a
    finished sentence for a fragment, and the reply answers half of it."""
    keep: list[np.ndarray] = []
    cursor = 0
    for start, end in sorted(pauses):
        if end - start <= keep_s:
            continue
        cut_from = int(round((start + keep_s / 2 - t0) * sample_rate))
        cut_to = int(round((end - keep_s / 2 - t0) * sample_rate))
        cut_from, cut_to = max(cut_from, cursor), min(cut_to, audio.size)
        if cut_to <= cut_from:
            continue
        keep.append(audio[cursor:cut_from])
        cursor = cut_to
    if not keep:
        return audio
    keep.append(audio[cursor:])
    return np.concatenate(keep)
