"""The cascade, composed: source -> Listener -> UserTurn -> Responder -> sink, events to observers.

Why asyncio + worker threads: the models are blocking calls that release the GIL (CTranslate2, PyTorch, espeak-ng's
pipe), so they run in threads, while one event loop owns ordering, timestamps and cancellation. The listener keeps
listening while a reply is produced and played; replies are answered one at a time, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

from fern.bus import EventBus
from fern.clock import SessionClock
from fern.events import CancelToken, UserTurn
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
                 preroll_ms: int = 300, postroll_ms: int = 300, max_turn_s: float = 300.0, workers: int = 4) -> None:
        self.source, self.sink, self.history = source, sink, history
        self.clock = clock or SessionClock()
        # one thread per concurrent blocking activity: capture, turn decisions, asr/llm, tts
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fern-stage")
        self.recorder = TurnRecorder()
        self.bus = EventBus([self.recorder, *observers])
        self.recorder.emit = self.bus.emit
        self.listener = Listener(vad=vad, turn=turn, clock=self.clock, emit=self.bus.emit, executor=self._executor,
                                 recorder=sink, preroll_ms=preroll_ms, postroll_ms=postroll_ms, max_turn_s=max_turn_s)
        self.responder = Responder(asr=asr, llm=llm, chunker=chunker, tts=tts, sink=sink, history=history,
                                   clock=self.clock, emit=self.bus.emit, executor=self._executor)
        self._reply: Reply | None = None

    @property
    def records(self) -> list[TurnRecord]:
        return self.recorder.records

    def interrupt(self) -> bool:
        """Cancel the reply in progress: the LLM and TTS stop at their next step, audio not yet heard is dropped,
        and history keeps only the clauses the user heard. The session goes on.

        Call it from the event loop; from another thread use ``loop.call_soon_threadsafe(pipeline.interrupt)``.
        Returns whether a reply was cancelled (False if none is running or one is already being cancelled)."""
        return self._reply is not None and self._reply.cancel()

    async def _respond(self, turns: asyncio.Queue) -> None:
        while (turn := await turns.get()) is not None:
            await self._answer(turn)

    async def _answer(self, turn: UserTurn) -> None:
        self._reply = self.responder.start(turn)
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
