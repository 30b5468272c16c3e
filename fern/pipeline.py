"""The cascade, run concurrently: source -> vad -> turn -> asr -> llm -> chunker -> tts -> sink.

Why asyncio + worker threads: the models are blocking calls that release the GIL (CTranslate2, PyTorch, espeak-ng's
pipe), so they run in threads, while one event loop owns ordering, timestamps and cancellation. Each reply is one
asyncio task; cancelling it (barge-in, later) sets the CancelToken that the LLM and TTS generators check every step.
Stages overlap: TTS speaks the first clause while the LLM is still generating, and the sink plays the first chunk
as soon as it exists.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from fern.clock import SessionClock
from fern.events import CancelToken, Clause, UserTurn
from fern.protocols import (AudioSink, AudioSource, Chunker, LanguageModel, SpeechRecognizer, SpeechSynthesizer,
                            TurnDetector, VoiceActivityDetector)

log = logging.getLogger(__name__)
T = TypeVar("T")
_DONE = object()


@dataclass
class TurnRecord:
    """Everything measured about one exchange; times are session-clock seconds (None: did not happen)."""

    turn_id: int
    user_text: str = ""
    agent_text: str = ""
    backend: str = ""
    fallback: bool = False
    error: str | None = None
    t_speech_start: float = 0.0
    t_last_voiced: float = 0.0
    t_end: float = 0.0
    t_asr_start: float | None = None
    t_asr_end: float | None = None
    t_llm_first_token: float | None = None
    t_llm_done: float | None = None
    t_first_clause: float | None = None
    t_tts_first_audio: float | None = None
    t_first_agent_sample: float | None = None
    t_tts_done: float | None = None
    user_audio_s: float = 0.0
    agent_audio_s: float = 0.0
    tts_compute_s: float = 0.0
    n_tokens: int = 0
    llm_text: str = ""  # everything the LLM wrote; differs from agent_text when a reply was interrupted
    t_last_agent_sample: float | None = None  # when the speaker finishes this reply
    clauses: list[str] = field(default_factory=list)
    clause_heard_at: list[float] = field(default_factory=list)  # when each clause starts on the speaker
    quality: dict[str, Any] = field(default_factory=dict)  # filled after the session (e.g. round-trip WER)

    def metrics(self) -> dict[str, float]:
        def ms(a: float | None, b: float | None) -> float:
            return float("nan") if a is None or b is None else round(1000.0 * (b - a), 1)

        m = {
            "endpoint_delay_ms": ms(self.t_last_voiced, self.t_end),
            "asr_ms": ms(self.t_asr_start, self.t_asr_end),
            "llm_ttft_ms": ms(self.t_asr_end, self.t_llm_first_token),
            "first_clause_ms": ms(self.t_asr_end, self.t_first_clause),
            "tts_first_audio_ms": ms(self.t_first_clause, self.t_tts_first_audio),
            "voice_to_voice_ms": ms(self.t_last_voiced, self.t_first_agent_sample),
            "llm_total_ms": ms(self.t_asr_end, self.t_llm_done),
            "asr_rtf": round(ms(self.t_asr_start, self.t_asr_end) / 1000.0 / self.user_audio_s, 4)
            if self.user_audio_s else float("nan"),
            "tts_rtf": round(self.tts_compute_s / self.agent_audio_s, 4) if self.agent_audio_s else float("nan"),
            "llm_tokens": float(self.n_tokens),
            "llm_ms_per_token": round(ms(self.t_llm_first_token, self.t_llm_done) / (self.n_tokens - 1), 2)
            if self.n_tokens > 1 else float("nan"),
            "user_audio_s": round(self.user_audio_s, 3),
            "agent_audio_s": round(self.agent_audio_s, 3),
            # 1 when the first agent audio existed before the LLM finished: the stages really overlapped
            "stages_overlapped": float(self.t_tts_first_audio is not None and self.t_llm_done is not None
                                       and self.t_tts_first_audio < self.t_llm_done),
            "llm_fallback": float(self.fallback),
        }
        m.update({k: float(v) for k, v in self.quality.items() if isinstance(v, (int, float))})
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"turn_id": self.turn_id, "user_text": self.user_text, "agent_text": self.agent_text,
                "llm_text": self.llm_text,
                "backend": self.backend, "error": self.error, "clauses": list(self.clauses),
                "round_trip_text": self.quality.get("round_trip_text"),
                "metrics": self.metrics(),
                "times": {k: v for k, v in asdict(self).items() if k.startswith("t_")}}


class VoicePipeline:
    def __init__(self, *, source: AudioSource, sink: AudioSink, vad: VoiceActivityDetector, turn: TurnDetector,
                 asr: SpeechRecognizer, llm: LanguageModel, chunker: Chunker, tts: SpeechSynthesizer,
                 history: Any, clock: SessionClock | None = None, preroll_ms: int = 300, postroll_ms: int = 300,
                 on_turn: Callable[[TurnRecord], None] | None = None) -> None:
        self.source, self.sink, self.vad, self.turn = source, sink, vad, turn
        self.asr, self.llm, self.chunker, self.tts = asr, llm, chunker, tts
        self.history = history
        self.clock = clock or SessionClock()
        self.preroll_s = preroll_ms / 1000
        self.postroll_s = postroll_ms / 1000
        self.on_turn = on_turn
        self.records: list[TurnRecord] = []
        self._reply: asyncio.Task | None = None
        # one thread per concurrent blocking activity: capture, asr/llm, tts
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fern-stage")

    # ---- plumbing ---------------------------------------------------------------------------------------------
    async def _iterate_in_thread(self, make_iter: Callable[[], Iterator[T]],
                                 cancel: CancelToken) -> AsyncIterator[tuple[float, T]]:
        """Drive a blocking generator in a worker thread; items arrive stamped with the session time they were made."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def deliver(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (self.clock.now(), item))
            except RuntimeError:  # loop already closed: the session is over
                pass

        def worker() -> None:
            items = make_iter()
            try:
                for item in items:
                    deliver(item)
                    if cancel.cancelled:
                        break
            except BaseException as exc:  # re-raised in the event loop
                deliver(_Failure(exc))
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()  # generators release what they hold (espeak-ng's process, a model's cache) now
                deliver(_DONE)

        worker_done = loop.run_in_executor(self._executor, worker)
        finished = False
        try:
            while True:
                t, item = await queue.get()
                if item is _DONE:
                    finished = True
                    break
                if isinstance(item, _Failure):
                    finished = True
                    raise item.exc
                yield t, item
        finally:
            if not finished:
                # The consumer stopped early (interrupted or failed): stop the producer and wait until it has
                # stopped (one step at most), so no stale worker still drives a model when the next reply starts.
                cancel.cancel()
                try:
                    await asyncio.shield(worker_done)
                except asyncio.CancelledError:
                    pass

    # ---- stages -----------------------------------------------------------------------------------------------
    async def _capture(self, out: asyncio.Queue) -> None:
        cancel = CancelToken()
        try:
            async with aclosing(self._iterate_in_thread(self.source.blocks, cancel)) as blocks:
                async for t, block in blocks:
                    await out.put((t, block))
        finally:
            await out.put(None)

    async def _listen(self, inbox: asyncio.Queue, turns: asyncio.Queue) -> None:
        rate = self.vad.sample_rate
        frame_len = rate * self.vad.frame_ms // 1000
        frame_s = frame_len / rate
        pending = np.zeros(0, np.float32)
        recent: deque[tuple[float, np.ndarray]] = deque(maxlen=int(300 / frame_s))  # the last 5 minutes: the longest turn we keep whole
        turn_id = 0
        try:
            while (item := await inbox.get()) is not None:
                t_block, block = item
                self.sink.record_user(block, rate, t_block)
                pending = np.concatenate([pending, block])
                n_frames = pending.size // frame_len
                for k in range(n_frames):
                    frame = pending[k * frame_len:(k + 1) * frame_len]
                    t_frame_end = t_block - (pending.size - (k + 1) * frame_len) / rate
                    recent.append((t_frame_end, frame))
                    ended = self.turn.push(t_frame_end, frame_s, self.vad.is_speech(frame))
                    if ended is None:
                        continue
                    t_start, t_last_voiced, t_end = ended
                    lo, hi = t_start - self.preroll_s, t_last_voiced + self.postroll_s
                    audio = np.concatenate([f for te, f in recent if lo < te <= hi + 1e-9])
                    await turns.put(UserTurn(t=t_end, turn_id=turn_id, audio=audio, sample_rate=rate,
                                             t_speech_start=t_start, t_last_voiced=t_last_voiced))
                    turn_id += 1
                pending = pending[n_frames * frame_len:]
        finally:
            await turns.put(None)

    async def _respond(self, turns: asyncio.Queue) -> None:
        while (user_turn := await turns.get()) is not None:
            # one task per reply: the handle that interrupt() (and barge-in) cancels
            self._reply = asyncio.create_task(self._answer(user_turn), name=f"reply-{user_turn.turn_id}")
            try:
                await self._reply
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the session itself is stopping
                log.info("turn %d: reply interrupted", user_turn.turn_id)
            except Exception:
                # one bad turn (a model error, a TTS crash) must not end the conversation; it is in the record
                log.exception("turn %d failed; the session goes on", user_turn.turn_id)
            finally:
                self._reply = None

    def interrupt(self) -> bool:
        """Cancel the reply in progress: the LLM and TTS stop at their next step, audio not yet heard is dropped,
        and history keeps only the clauses the user heard. The session goes on.

        Call it from the event loop; from another thread use ``loop.call_soon_threadsafe(pipeline.interrupt)``.
        Returns whether a reply was cancelled (False if none is running or one is already being cancelled)."""
        if self._reply is None or self._reply.done() or self._reply.cancelling():
            return False
        self._reply.cancel()
        return True

    async def _answer(self, user_turn: UserTurn) -> None:
        loop = asyncio.get_running_loop()
        rec = TurnRecord(turn_id=user_turn.turn_id, t_speech_start=user_turn.t_speech_start,
                         t_last_voiced=user_turn.t_last_voiced, t_end=user_turn.t,
                         user_audio_s=user_turn.audio.size / user_turn.sample_rate)
        cancel = CancelToken()
        speaking: asyncio.Task | None = None
        reply: list[str] = []
        try:
            rec.t_asr_start = self.clock.now()
            rec.user_text = await loop.run_in_executor(self._executor, self.asr.transcribe, user_turn.audio)
            rec.t_asr_end = self.clock.now()
            if not rec.user_text:
                log.info("turn %d: nothing recognised, no reply", rec.turn_id)
                rec.error = "no speech recognised"
                self._finish(rec)
                return
            self.history.add_user(rec.user_text)
            messages = self.history.messages()
            clauses: asyncio.Queue = asyncio.Queue()
            speaking = asyncio.create_task(self._speak(clauses, rec, cancel))
            stream = self._iterate_in_thread(lambda: self.llm.stream(messages, cancel), cancel)
            async with aclosing(stream):
                async for t, piece in stream:
                    if rec.t_llm_first_token is None:
                        rec.t_llm_first_token = t
                    reply.append(piece)
                    rec.n_tokens += 1
                    for text in self.chunker.push(piece):
                        self._emit_clause(clauses, rec, text)
                    if speaking.done():
                        speaking.result()  # the TTS failed: stop the LLM too, rather than finish a reply nobody hears
            rec.t_llm_done = self.clock.now()
            for text in self.chunker.flush():
                self._emit_clause(clauses, rec, text)
            clauses.put_nowait(None)
            await speaking
        except BaseException as exc:
            interrupted = isinstance(exc, asyncio.CancelledError)
            t_stop = self.clock.now()
            cancel.cancel()
            if speaking is not None:
                speaking.cancel()
                await asyncio.gather(speaking, return_exceptions=True)
            self.chunker.flush()  # leftovers of this reply must not start the next one
            if interrupted:
                self.sink.stop(t_stop)  # what the user has not heard yet is not said
            heard = [text for text, t in zip(rec.clauses, rec.clause_heard_at) if t < t_stop]
            rec.error = "interrupted" if interrupted else f"{type(exc).__name__}: {exc}"
            rec.agent_text = " ".join(heard)
            rec.llm_text = "".join(reply).strip()
            if rec.user_text:
                # the conversation keeps what the user heard, not what the LLM had already written
                self.history.add_assistant(rec.agent_text)
            self._finish(rec)
            raise
        info = getattr(self.llm, "last_stream_info", None) or {}
        rec.backend = info.get("backend", getattr(self.llm, "name", type(self.llm).__name__))
        rec.fallback = bool(info.get("fallback", False))
        rec.n_tokens = int(info.get("n_tokens", rec.n_tokens))
        rec.agent_text = rec.llm_text = "".join(reply).strip()
        self.history.add_assistant(rec.agent_text)
        self._finish(rec)

    def _emit_clause(self, clauses: asyncio.Queue, rec: TurnRecord, text: str) -> None:
        now = self.clock.now()
        if rec.t_first_clause is None:
            rec.t_first_clause = now
        clauses.put_nowait(Clause(t=now, turn_id=rec.turn_id, index=len(rec.clauses), text=text))
        rec.clauses.append(text)

    async def _speak(self, clauses: asyncio.Queue, rec: TurnRecord, cancel: CancelToken) -> None:
        while (clause := await clauses.get()) is not None:
            t_begin = self.clock.now()
            chunks = self._iterate_in_thread(lambda: self.tts.stream(clause.text, cancel), cancel)
            async with aclosing(chunks):
                async for t, chunk in chunks:
                    if rec.t_tts_first_audio is None:
                        rec.t_tts_first_audio = t
                    heard_at = self.sink.play(chunk, self.tts.sample_rate, t)
                    if rec.t_first_agent_sample is None:
                        rec.t_first_agent_sample = heard_at
                    if len(rec.clause_heard_at) <= clause.index:
                        rec.clause_heard_at.append(heard_at)
                    duration = chunk.size / self.tts.sample_rate
                    rec.agent_audio_s += duration
                    rec.t_last_agent_sample = heard_at + duration
            rec.tts_compute_s += self.clock.now() - t_begin
        rec.t_tts_done = self.clock.now()

    def _finish(self, rec: TurnRecord) -> None:
        self.records.append(rec)
        if self.on_turn is not None:
            self.on_turn(rec)

    # ---- entry point ------------------------------------------------------------------------------------------
    async def run(self) -> list[TurnRecord]:
        blocks: asyncio.Queue = asyncio.Queue()
        turns: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.create_task(self._capture(blocks), name="capture"),
                 asyncio.create_task(self._listen(blocks, turns), name="listen"),
                 asyncio.create_task(self._respond(turns), name="respond")]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self.source.close()
            self.sink.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
        return self.records

    def run_sync(self) -> list[TurnRecord]:
        return asyncio.run(self.run())


@dataclass(frozen=True)
class _Failure:
    exc: BaseException
