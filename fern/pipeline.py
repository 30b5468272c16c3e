"""The cascade, composed: source -> Listener -> UserTurn -> Responder -> sink, events to observers.

Why asyncio + worker threads: the models are blocking calls that release the GIL (CTranslate2, PyTorch, espeak-ng's
pipe), so they run in threads, while one event loop owns ordering, timestamps and cancellation. The listener keeps
listening while a reply is produced and played; replies are answered one at a time, in order.

Barge-in: user speech that starts while the agent is heard and lasts ``barge_in_min_speech_ms`` stops the speaker at
once and cancels the reply; history keeps the words that were heard (fern.responder). With ``self_speech_guard`` the
overlap is recognised first and ignored when it is the agent's own words (echo the canceller missed).

Speculation: when the turn detector finds a pause likely final (TurnLikelyOver) and no reply is running, a reply is
started unreleased — recognition, LLM and TTS run, nothing is heard or recorded. The confirmed UserTurn releases it
(kept); speech that resumes drops it. Either way the listener's recognition of the pause is reused, not repeated.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

from fern.bus import EventBus
from fern.clock import SessionClock
from fern.events import (
    AgentAudio,
    BargeIn,
    CancelToken,
    Clause,
    Event,
    SpeechResumed,
    SpeechStarted,
    TurnLikelyOver,
    UserTurn,
)
from fern.listener import Listener
from fern.metrics import TurnRecord
from fern.observers.record import TurnRecorder
from fern.protocols import (
    AudioSource,
    ChatHistory,
    Chunker,
    LanguageModel,
    Observer,
    RecordingSink,
    ScoredRecognizer,
    SharesSessionClock,
    SpeechRecognizer,
    SpeechSynthesizer,
    TurnDetector,
    VoiceActivityDetector,
)
from fern.responder import Reply, Responder
from fern.streams import ThreadStream

log = logging.getLogger(__name__)


class VoicePipeline:
    def __init__(self, *, source: AudioSource, sink: RecordingSink, vad: VoiceActivityDetector, turn: TurnDetector,
                 asr: SpeechRecognizer, llm: LanguageModel, chunker: Chunker, tts: SpeechSynthesizer,
                 history: ChatHistory, clock: SessionClock | None = None, observers: Iterable[Observer] = (),
                 preroll_ms: int = 300, postroll_ms: int = 300, max_turn_s: float = 300.0, inner_pause_ms: int = 300,
                 reply_words: str = "asr", workers: int = 4, barge_in: bool = True, barge_in_min_speech_ms: int = 200,
                 self_speech_guard: bool = False) -> None:
        self.source, self.sink, self.history = source, sink, history
        self.clock = clock or SessionClock()
        for device in (source, sink):
            if isinstance(device, SharesSessionClock):  # a real microphone/speaker reports times on our clock
                device.use_clock(self.clock)
        self.barge_in, self.self_speech_guard = barge_in, self_speech_guard
        self.barge_in_min_speech_s = barge_in_min_speech_ms / 1000
        # one thread per concurrent blocking activity: capture, turn decisions, asr/llm, tts
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fern-stage")
        self.recorder = TurnRecorder()
        self.bus = EventBus([self.recorder, self, *observers])
        self.recorder.emit = self.bus.emit
        self.listener = Listener(vad=vad, turn=turn, clock=self.clock, emit=self.bus.emit, executor=self._executor,
                                 recorder=sink, preroll_ms=preroll_ms, postroll_ms=postroll_ms, max_turn_s=max_turn_s,
                                 inner_pause_ms=inner_pause_ms, transcribe=self._transcribe_scored,
                                 reply_words=reply_words)
        self.responder = Responder(asr=asr, llm=llm, chunker=chunker, tts=tts, sink=sink, history=history,
                                   clock=self.clock, emit=self.bus.emit, executor=self._executor)
        self._reply: Reply | None = None
        self._speculative: Reply | None = None
        self.speculation = {"kept": 0, "dropped": 0}
        self._audible_until = 0.0  # when the speaker finishes what it has been given
        self._playing_clauses: list[str] = []  # of the reply being heard (the self-speech guard compares with them)
        self._barge_check: asyncio.Task | None = None
        self._first_heard: dict[int, float] = {}  # turn id -> when the first sample of its reply was heard

    @property
    def records(self) -> list[TurnRecord]:
        return self.recorder.records

    def interrupt(self) -> bool:
        """Cancel the reply in progress: the LLM and TTS stop at their next step, audio not yet heard is dropped,
        and history keeps only the clauses the user heard. The session goes on.

        Call it from the event loop; from another thread use ``loop.call_soon_threadsafe(pipeline.interrupt)``.
        Returns whether a reply was cancelled (False if none is running or one is already being cancelled)."""
        return self._reply is not None and self._reply.cancel()

    async def _transcribe(self, audio):
        """The responder's ASR, off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.responder.asr.transcribe, audio)

    async def _transcribe_scored(self, audio) -> tuple[str, float]:
        """The listener's recognition of a pause (for detectors that read words), with the recogniser's confidence
        where it gives one."""
        asr = self.responder.asr
        if isinstance(asr, ScoredRecognizer):
            return await asyncio.get_running_loop().run_in_executor(self._executor, asr.transcribe_scored, audio)
        return await self._transcribe(audio), float("nan")

    # ---- speculation (the pipeline observes the listener's events) ----------------------------------------------
    def on_event(self, event: Event) -> None:
        if isinstance(event, AgentAudio):
            self._audible_until = max(self._audible_until, event.heard_at + event.samples.size / event.sample_rate)
            self._first_heard.setdefault(event.turn_id, event.heard_at)
        elif isinstance(event, Clause):
            self._playing_clauses = [*self._playing_clauses[-1:], event.text]
        elif isinstance(event, SpeechStarted) and self.barge_in and self._agent_heard(event.t):
            if self._barge_check is None or self._barge_check.done():
                self._barge_check = asyncio.ensure_future(self._barge_in_if_it_lasts(event))
        if isinstance(event, TurnLikelyOver) and self._reply is None and self._speculative is None:
            self._speculative = self.responder.start(event.turn, release=False)
        elif isinstance(event, SpeechResumed) and self._speculative is not None:
            self._speculative.cancel()
            self._speculative = None
            self.speculation["dropped"] += 1

    def close(self) -> None:
        if self._speculative is not None:  # the session ended during a pause
            self._speculative.cancel()
        if self._barge_check is not None:
            self._barge_check.cancel()

    # ---- barge-in ------------------------------------------------------------------------------------------------
    def _agent_heard(self, t: float) -> bool:
        """The agent is talking (or about to: a released reply is running)."""
        running = self._reply is not None and not self._reply.done and self._reply.may_play.is_set()
        return running or t < self._audible_until

    async def _barge_in_if_it_lasts(self, started: SpeechStarted) -> None:
        segmenter = self.listener.segmenter
        t_decide = started.t_speech_start + self.barge_in_min_speech_s
        same_speech = lambda: (segmenter.in_turn and not segmenter.paused  # noqa: E731
                               and segmenter.t_start == started.t_speech_start)
        # Judge on the audio until t_decide, not on the frames that happen to have arrived by then: blocks reach the
        # listener after they are captured, in bursts on a loaded machine or with long device periods (judging early
        # missed such barge-ins altogether, as nothing asks again).
        while self.listener.heard_until + 1e-9 < t_decide and same_speech():
            await asyncio.sleep(max(0.005, t_decide - self.clock.now()))
        # still talking, for long enough: not a cough or a backchannel
        if not (same_speech() and segmenter.speech_s + 1e-9 >= self.barge_in_min_speech_s):
            return
        reply = self._reply
        if reply is None or not self._agent_heard(self.clock.now()):
            return
        if self.self_speech_guard and await self._is_own_voice(started):
            # not the user: it must not become a turn either, or the agent answers its own words once it stops
            if same_speech():
                self.listener.drop_speech()
            return
        turn_id = reply.turn.turn_id
        # the user went on before hearing a word of the reply: the turn that ended was not over
        reply.continued = self._first_heard.get(turn_id, math.inf) > started.t_speech_start
        if reply.cancel():
            log.info("barge-in: the user talked over reply %d", turn_id)
            self._audible_until = reply.t_silent if reply.t_silent is not None else self.clock.now()
            self.bus.emit(BargeIn(t=self.clock.now(), turn_id=turn_id, t_speech_start=started.t_speech_start))
            if reply.continued and self.listener.continue_turn(turn_id):
                log.info("turn %d: the user went on before the reply was heard; the turn continues", turn_id)

    async def _is_own_voice(self, started: SpeechStarted) -> bool:
        from fern.echo import is_self_speech

        text = await self._transcribe(self.listener.audio_since(started.t_speech_start))
        own = is_self_speech(text, self._playing_clauses)
        if own:
            log.info("barge-in ignored: %r is the agent's own voice", text)
        return own

    async def _respond(self, turns: asyncio.Queue) -> None:
        while (turn := await turns.get()) is not None:
            await self._answer(turn)

    def _reply_for(self, turn: UserTurn) -> Reply:
        speculative, self._speculative = self._speculative, None
        if speculative is not None and speculative.turn.turn_id == turn.turn_id and not speculative.done:
            speculative.release()
            self.speculation["kept"] += 1
            return speculative
        if speculative is not None:
            speculative.cancel()
            self.speculation["dropped"] += 1
        return self.responder.start(turn)

    async def _answer(self, turn: UserTurn) -> None:
        self._reply = self._reply_for(turn)
        try:
            await self._reply.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the session itself is stopping
            log.info("turn %d: reply interrupted", turn.turn_id)
        except Exception:
            # one bad turn (a model error, a TTS crash) must not end the conversation; it is in the record
            log.exception("turn %d failed; the session goes on", turn.turn_id)
        finally:
            self._reply = None

    async def run(self) -> list[TurnRecord]:
        turns: asyncio.Queue = asyncio.Queue()
        capture = ThreadStream(self.source.blocks, CancelToken(), self._executor, self.clock)
        try:
            async with aclosing(capture.items()) as blocks:
                tasks = [asyncio.create_task(self.listener.run(blocks, turns), name="listen"),
                         asyncio.create_task(self._respond(turns), name="respond")]
                try:
                    await asyncio.gather(*tasks)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.source.close()
            self.sink.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.bus.close()  # whatever happened, the turns that did happen are written out and logged
        return self.records

    def run_sync(self) -> list[TurnRecord]:
        return asyncio.run(self.run())
