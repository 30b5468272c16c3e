"""The listener: microphone blocks -> frames -> VAD -> segmentation -> end-of-turn decisions -> UserTurn events.

It keeps a ring buffer of recent frames (a turn's audio is cut from it, with pre- and post-roll), records the user's
side on the recording sink, and reports speech starts (the barge-in cue). Pauses are judged by the turn detector at
its checkpoints, off the event loop (a model may take tens of milliseconds); speech that resumes before a verdict
voids it. The turn so far is recognised through ``transcribe`` (the responder's ASR) during a pause, so that a reply
starts from words that are already there: from the first checkpoint for a detector that reads them
(``needs_transcript``; it gets them as soon as they exist), else once its first verdict is in.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor

import numpy as np

from fern.clock import SessionClock
from fern.config.schema import ReplyWords
from fern.errors import ConfigValueError
from fern.events import Event, SpeechResumed, SpeechStarted, Transcript, TurnLikelyOver, UserTurn
from fern.protocols import RecordingSink, TurnDetector, VoiceActivityDetector
from fern.turn.base import PauseState, Verdict
from fern.turn.segmenter import Checkpoint, Resume, Segmenter, SpeechStart, squeeze_pauses

log = logging.getLogger(__name__)

# where the reply's words come from: the reply's ASR on the pause, or (when the turn detector reads the words itself,
# turn=semantic) the detector's reading, which saves the reply's recognition at some cost in accuracy
REPLY_WORDS = tuple(choice.value for choice in ReplyWords)


class Listener:
    def __init__(self, *, vad: VoiceActivityDetector, turn: TurnDetector, clock: SessionClock,
                 emit: Callable[[Event], None], executor: Executor, recorder: RecordingSink | None = None,
                 preroll_ms: int = 300, postroll_ms: int = 300, max_turn_s: float = 300.0, inner_pause_ms: int = 300,
                 transcribe: Callable[[np.ndarray], Awaitable[tuple[str, float]]] | None = None,
                 reply_words: str = "asr") -> None:
        self.vad, self.turn, self.clock, self.emit = vad, turn, clock, emit
        self.executor, self.recorder, self.transcribe = executor, recorder, transcribe
        self.rate = vad.sample_rate
        self.frame_len = vad.sample_rate * vad.frame_ms // 1000
        self.frame_s = self.frame_len / self.rate
        self.preroll_s, self.postroll_s = preroll_ms / 1000, postroll_ms / 1000
        if inner_pause_ms < 0:
            raise ConfigValueError(f"listener.inner_pause_ms={inner_pause_ms} must be >= 0")
        self.inner_pause_s = inner_pause_ms / 1000  # what the models hear of a pause the user spoke after
        if reply_words not in REPLY_WORDS:
            raise ConfigValueError(f"listener.reply_words={reply_words!r}: choose one of {list(REPLY_WORDS)}")
        self.reply_words = reply_words
        self.segmenter = Segmenter(turn.checkpoints_s, turn.speech_start_ms, turn.min_speech_ms)
        # the longest turn kept whole; older frames fall out of the buffer
        self._recent: deque[tuple[float, np.ndarray]] = deque(maxlen=max(1, int(max_turn_s / self.frame_s)))
        self._turns: asyncio.Queue | None = None
        self._turn_id = 0
        self._pause = 0  # generation of the current pause: a verdict for an older one is void
        self._judging: set[asyncio.Task] = set()
        self._transcript: asyncio.Future | None = None  # recognition of the current pause's audio, if asked for
        self._speculated = False  # a TurnLikelyOver went out for the current pause
        # the last turn that ended: (turn id, start, last voiced, pauses), for continue_turn
        self._last_ended: tuple[int, float, float, list[tuple[float, float]]] | None = None
        # verdicts run in worker threads and may overlap (a checkpoint, and the re-judging when the words arrive);
        # detectors hold models and caches that are not thread-safe, so they judge one pause state at a time
        self._deciding = threading.Lock()

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
            self.emit(SpeechResumed(t=t_frame_end, pause_s=signal.pause_s))
        elif isinstance(signal, Checkpoint):
            if signal.last:
                self._end_turn(signal.t)
            else:
                self._judge(signal.index, signal.silence_s, signal.t)

    def _void_pause(self) -> None:
        self._pause += 1
        self._speculated = False
        if self._transcript is not None:
            self._transcript.cancel()
            self._transcript = None

    def _audio(self, lo: float, hi: float) -> np.ndarray:
        frames = [f for te, f in self._recent if lo < te <= hi + 1e-9]
        return np.concatenate(frames) if frames else np.zeros(0, np.float32)

    def _turn_audio(self, hi: float) -> np.ndarray:
        """The turn so far, from its pre-roll up to ``hi``, as the models get it: each pause the user spoke after
        shortened to ``inner_pause_s`` (fern.turn.segmenter.squeeze_pauses says why)."""
        lo = self.segmenter.t_start - self.preroll_s
        frames = [(te, f) for te, f in self._recent if lo < te <= hi + 1e-9]
        if not frames:
            return np.zeros(0, np.float32)
        t0 = frames[0][0] - frames[0][1].size / self.rate
        return squeeze_pauses(np.concatenate([f for _, f in frames]), self.rate, t0, self.segmenter.pauses,
                              self.inner_pause_s)

    def continue_turn(self, turn_id: int) -> bool:
        """The speech in progress continues turn ``turn_id`` (the user went on before hearing its reply): the next
        UserTurn starts where that one did, its gap a pause like any other. False when ``turn_id`` is not the turn
        that ended last, or no speech is in progress."""
        if self._last_ended is None or self._last_ended[0] != turn_id or not self.segmenter.in_turn:
            return False
        _, t_start, t_last_voiced, pauses = self._last_ended
        seg = self.segmenter
        seg.pauses = [*pauses, (t_last_voiced, seg.t_start), *seg.pauses]
        seg.t_start = t_start
        self._last_ended = None
        return True

    def drop_speech(self) -> None:
        """Forget the speech in progress: no turn is made of it (the agent's own voice coming back as echo)."""
        self._void_pause()
        self.segmenter.reset()

    @property
    def heard_until(self) -> float:
        """Session time the last frame processed ends (blocks arrive a little after they are captured)."""
        return self._recent[-1][0] if self._recent else 0.0

    def audio_since(self, t: float) -> np.ndarray:
        """The microphone's audio from session time ``t`` (minus the pre-roll) until now."""
        return self._audio(t - self.preroll_s, self.clock.now())

    def _candidate(self, t: float, transcript: asyncio.Future | None) -> UserTurn:
        """The turn as it stands: what UserTurn (or a speculative reply) carries."""
        seg = self.segmenter
        audio = self._turn_audio(min(t, seg.t_last_voiced + self.postroll_s))
        return UserTurn(t=t, turn_id=self._turn_id, audio=audio, sample_rate=self.rate, t_speech_start=seg.t_start,
                        t_last_voiced=seg.t_last_voiced, transcript=transcript)

    # ---- decisions --------------------------------------------------------------------------------------------
    def _judge(self, index: int, silence_s: float, t: float) -> None:
        pause = self._pause
        audio = self._turn_audio(t)
        verdict = self._track(self._verdict(pause, silence_s, audio))
        if self.transcribe is None or self._transcript is not None:
            return
        # the pause is recognised whether or not the detector reads the words: the reply then starts from them
        # (overlap, not add). A detector that reads them waits for them; for one that does not, its verdict is on
        # the critical path and the words only once the turn is over, so they start when the first verdict is in
        # (on a busy CPU the two would slow each other down)
        if self.turn.needs_transcript:
            self._recognise_pause(pause, audio)
        else:
            verdict.add_done_callback(lambda _, pause=pause, audio=audio: self._recognise_pause(pause, audio))

    def _recognise_pause(self, pause: int, audio: np.ndarray) -> None:
        if pause != self._pause or self._transcript is not None:
            return  # the user went on, or the turn ended first (the reply recognises it then)
        self._transcript = asyncio.ensure_future(self._recognise(audio))
        if self.turn.needs_transcript:
            # the words arrive after the first verdict: judge again then, at whatever silence it is by then
            self._transcript.add_done_callback(lambda task, pause=pause: self._rejudge(pause, task))

    def _track(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._judging.add(task)
        task.add_done_callback(self._judging.discard)
        return task

    async def _recognise(self, audio: np.ndarray) -> Transcript:
        assert self.transcribe is not None
        t_start, turn_id = self.clock.now(), self._turn_id  # the turn may end (and the id move on) while it runs
        text, logprob = await self.transcribe(audio)
        return Transcript(t=self.clock.now(), turn_id=turn_id, text=text, t_start=t_start, asr_logprob=logprob)

    def _rejudge(self, pause: int, task: asyncio.Future) -> None:
        if pause != self._pause or task.cancelled() or task.exception() is not None or not self.segmenter.paused:
            return
        # the turn as heard so far, its silence counted in frames (the segmenter's): the cached scores of this
        # pause's first checkpoint are found again only when the two agree to the sample
        self._track(self._verdict(pause, self.segmenter.silence_s, self._turn_audio(self.heard_until)))

    async def _verdict(self, pause: int, silence_s: float, audio: np.ndarray) -> None:
        transcript, logprob = None, float("nan")
        task = self._transcript if self.turn.needs_transcript else None
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            transcript, logprob = task.result().text, task.result().asr_logprob
        state = PauseState(audio=audio, sample_rate=self.rate, silence_s=silence_s, transcript=transcript,
                           transcript_logprob=logprob)
        loop = asyncio.get_running_loop()
        t_asked = self.clock.now()
        try:
            decided = await loop.run_in_executor(self.executor, self._decide, pause, state)
        except Exception:  # noqa: BLE001 - a failing detector falls back to the last checkpoint
            log.exception("turn detector failed; waiting for the last checkpoint")
            return
        if decided is None:
            return  # void before it was computed
        verdict, compute_s = decided
        log.debug("verdict at %.0f ms of silence: P=%.3f end=%s, in %.0f ms (%.0f computing)%s", 1000 * silence_s,
                  verdict.probability, verdict.end, 1000 * (self.clock.now() - t_asked), 1000 * compute_s,
                  "" if pause == self._pause else " (void: the user went on)")
        if pause != self._pause or not self.segmenter.paused:
            return  # the user went on, or the turn already ended
        if verdict.words is not None and self.reply_words == "detector" and self._transcript is None:
            # the reply starts from these words; the pause's recognition is not started at all
            now = self.clock.now()
            self._transcript = loop.create_future()
            self._transcript.set_result(Transcript(t=now, turn_id=self._turn_id, text=verdict.words, t_start=now))
        if verdict.end:
            self._end_turn(self.clock.now())
        elif verdict.speculate and not self._speculated:
            self._speculated = True
            now = self.clock.now()
            self.emit(TurnLikelyOver(t=now, turn=self._candidate(now, self._transcript)))

    def _decide(self, pause: int, state: PauseState) -> tuple[Verdict, float] | None:
        with self._deciding:
            if pause != self._pause or not self.segmenter.paused:
                # the user went on, or the turn ended, while it waited for the lane: computing it would only delay
                # what runs next (the reply's ASR, the next pause's verdict)
                return None
            t0 = time.perf_counter()
            return self.turn.decide(state), time.perf_counter() - t0

    def _end_turn(self, t_end: float) -> None:
        transcript = self._transcript
        self._transcript = None  # handed over with the turn, not cancelled: the reply uses it
        self._void_pause()
        if not self.segmenter.in_turn:
            return
        event = self._candidate(t_end, transcript)
        seg = self.segmenter
        ended = (self._turn_id, seg.t_start, seg.t_last_voiced, list(seg.pauses))
        if seg.end_turn(t_end) is None:  # too short to be a turn
            return
        self._last_ended = ended
        self._turn_id += 1
        self.emit(event)
        assert self._turns is not None
        self._turns.put_nowait(event)
