"""The listener: microphone blocks -> frames -> VAD -> segmentation -> end-of-turn decisions -> UserTurn events.

It keeps a ring buffer of recent frames (a turn's audio is cut from it, with pre- and post-roll), records the user's
side on the recording sink, and reports speech starts (the barge-in cue). Pauses are judged by the turn detector at
its checkpoints, off the event loop (a model may take tens of milliseconds); speech that resumes before a verdict
voids it. A detector that reads words gets a transcript of the turn so far through ``transcribe`` (the responder's
ASR), started at the first checkpoint of a pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor

import numpy as np

from fern.clock import SessionClock
from fern.events import Event, SpeechStarted, UserTurn
from fern.protocols import RecordingSink, TurnDetector, VoiceActivityDetector
from fern.turn.base import PauseState, Verdict
from fern.turn.segmenter import Checkpoint, Resume, Segmenter, SpeechStart

log = logging.getLogger(__name__)


class Listener:
    def __init__(self, *, vad: VoiceActivityDetector, turn: TurnDetector, clock: SessionClock,
                 emit: Callable[[Event], None], executor: Executor, recorder: RecordingSink | None = None,
                 preroll_ms: int = 300, postroll_ms: int = 300, max_turn_s: float = 300.0,
                 transcribe: Callable[[np.ndarray], Awaitable[str]] | None = None) -> None:
        self.vad, self.turn, self.clock, self.emit = vad, turn, clock, emit
        self.executor, self.recorder, self.transcribe = executor, recorder, transcribe
        self.rate = vad.sample_rate
        self.frame_len = vad.sample_rate * vad.frame_ms // 1000
        self.frame_s = self.frame_len / self.rate
        self.preroll_s, self.postroll_s = preroll_ms / 1000, postroll_ms / 1000
        self.segmenter = Segmenter(turn.checkpoints_s, turn.speech_start_ms, turn.min_speech_ms)
        # the longest turn kept whole; older frames fall out of the buffer
        self._recent: deque[tuple[float, np.ndarray]] = deque(maxlen=max(1, int(max_turn_s / self.frame_s)))
        self._turns: asyncio.Queue | None = None
        self._turn_id = 0
        self._pause = 0  # generation of the current pause: a verdict for an older one is void
        self._judging: set[asyncio.Task] = set()
        self._transcript: asyncio.Task | None = None

    async def run(self, blocks: AsyncIterator[tuple[float, np.ndarray]], turns: asyncio.Queue) -> None:
        """Consume stamped blocks until the source ends; put each UserTurn on ``turns``, then None."""
        self._turns = turns
        pending = np.zeros(0, np.float32)
        try:
            async for t_block, block in blocks:
                if self.recorder is not None:
                    self.recorder.record_user(block, self.rate, t_block)
                pending = np.concatenate([pending, block])
                n_frames = pending.size // self.frame_len
                for k in range(n_frames):
                    frame = pending[k * self.frame_len:(k + 1) * self.frame_len]
                    t_frame_end = t_block - (pending.size - (k + 1) * self.frame_len) / self.rate
                    self._recent.append((t_frame_end, frame))
                    self._on_frame(t_frame_end, frame)
                pending = pending[n_frames * self.frame_len:]
            if self._judging:  # the source ended mid-pause: let the last verdicts land
                await asyncio.gather(*self._judging, return_exceptions=True)
        finally:
            for task in (*self._judging, self._transcript):
                if task is not None:
                    task.cancel()
            await turns.put(None)

    # ---- segmentation -----------------------------------------------------------------------------------------
    def _on_frame(self, t_frame_end: float, frame: np.ndarray) -> None:
        signal = self.segmenter.push(t_frame_end, self.frame_s, self.vad.is_speech(frame))
        if isinstance(signal, SpeechStart):
            self.emit(SpeechStarted(t=t_frame_end, t_speech_start=signal.t))
        elif isinstance(signal, Resume):
            self._void_pause()
        elif isinstance(signal, Checkpoint):
            if signal.last:
                self._end_turn(signal.t)
            else:
                self._judge(signal)

    def _void_pause(self) -> None:
        self._pause += 1
        if self._transcript is not None:
            self._transcript.cancel()
            self._transcript = None

    def _audio(self, lo: float, hi: float) -> np.ndarray:
        frames = [f for te, f in self._recent if lo < te <= hi + 1e-9]
        return np.concatenate(frames) if frames else np.zeros(0, np.float32)

    # ---- decisions --------------------------------------------------------------------------------------------
    def _judge(self, checkpoint: Checkpoint) -> None:
        pause = self._pause
        audio = self._audio(checkpoint.t_start - self.preroll_s, checkpoint.t)
        if self.turn.needs_transcript and self.transcribe is not None and checkpoint.index == 0:
            self._transcript = asyncio.ensure_future(self.transcribe(audio))
        task = asyncio.ensure_future(self._verdict(pause, checkpoint, audio))
        self._judging.add(task)
        task.add_done_callback(self._judging.discard)

    async def _verdict(self, pause: int, checkpoint: Checkpoint, audio: np.ndarray) -> None:
        transcript = None
        if self._transcript is not None and self._transcript.done() and not self._transcript.cancelled():
            transcript = self._transcript.result()
        state = PauseState(audio=audio, sample_rate=self.rate, silence_s=checkpoint.silence_s, transcript=transcript)
        loop = asyncio.get_running_loop()
        try:
            verdict: Verdict = await loop.run_in_executor(self.executor, self.turn.decide, state)
        except Exception:  # noqa: BLE001 - a failing detector falls back to the last checkpoint
            log.exception("turn detector failed; waiting for the last checkpoint")
            return
        if pause == self._pause and self.segmenter.paused and verdict.end:
            self._end_turn(self.clock.now())

    def _end_turn(self, t_end: float) -> None:
        self._void_pause()
        bounds = self.segmenter.end_turn(t_end)
        if bounds is None:
            return
        audio = self._audio(bounds.t_start - self.preroll_s, bounds.t_last_voiced + self.postroll_s)
        event = UserTurn(t=t_end, turn_id=self._turn_id, audio=audio, sample_rate=self.rate,
                         t_speech_start=bounds.t_start, t_last_voiced=bounds.t_last_voiced)
        self._turn_id += 1
        self.emit(event)
        assert self._turns is not None
        self._turns.put_nowait(event)
