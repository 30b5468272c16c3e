"""The responder: one reply to one user turn — ASR -> LLM -> chunker -> TTS -> sink — as one cancellable unit.

``start`` returns a Reply: its task runs the stages concurrently (TTS speaks the first clause while the LLM goes on,
the sink plays the first chunk as soon as it exists). A reply can be started before the turn is confirmed
(``release=False``: it computes, but nothing reaches the speaker until ``release()``), kept, or dropped (``cancel``);
a playing reply is stopped at the current sample. History changes only when a released reply ends, and then keeps
what the user heard; a reply dropped before release leaves no trace in it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass, field

import numpy as np

from fern.clock import SessionClock
from fern.events import (
    AgentAudio,
    CancelToken,
    Clause,
    ClauseSpoken,
    Event,
    LlmDone,
    LlmToken,
    ReplyEnded,
    StageStats,
    StreamInfo,
    Transcript,
    UserTurn,
)
from fern.protocols import (
    AudioSink,
    ChatHistory,
    Chunker,
    LanguageModel,
    PlayedAudio,
    ReportsPlayback,
    SpeechRecognizer,
    SpeechSynthesizer,
)
from fern.streams import ThreadStream

log = logging.getLogger(__name__)
NO_SPEECH = "no speech recognised"


@dataclass
class Reply:
    turn: UserTurn
    emit_now: Callable[[Event], None]
    stop_playback: Callable[[], float]  # silences the speaker now; returns when it fell silent
    task: asyncio.Task | None = None
    t_silent: float | None = None  # set by cancel() on a reply that was being heard
    token: CancelToken = field(default_factory=CancelToken)  # the LLM and TTS threads stop at their next step
    may_play: asyncio.Event = field(default_factory=asyncio.Event)  # set: audio may reach the speaker
    held: list[Event] = field(default_factory=list)  # what the reply did before it was released
    # the user went on before hearing any of it: their turn continues in the next, which carries its words, so the
    # conversation keeps them there and not here
    continued: bool = False

    def emit(self, event: Event) -> None:
        """Events of an unreleased reply are held: nobody sees a speculation that may still be dropped."""
        if self.may_play.is_set():
            self.emit_now(event)
        else:
            self.held.append(event)

    def release(self) -> None:
        """The turn is confirmed: what the reply did so far becomes visible (with its own times) and it may play."""
        self.may_play.set()
        held, self.held = self.held, []
        for event in held:
            self.emit_now(event)

    def cancel(self) -> bool:
        """Drop the reply (barge-in, or the user resumed a turn this reply was speculating on). False if it already
        ended or is being cancelled."""
        if self.task is None or self.task.done() or self.task.cancelling():
            return False
        self.token.cancel()  # no chunk is played after this (the speaking task checks it before each play)
        if self.may_play.is_set():
            # silence first, in this very step: the task's own clean-up runs a loop iteration later
            self.t_silent = self.stop_playback()
        self.task.cancel()
        return True

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()


@dataclass
class _Progress:
    """What one reply has done so far: enough to say, when it ends early, what the user heard."""

    user_text: str = ""
    pieces: list[str] = field(default_factory=list)
    clauses: list[str] = field(default_factory=list)
    heard_at: list[float] = field(default_factory=list)  # when each clause started on the speaker (predicted)
    audio_s: list[float] = field(default_factory=list)  # seconds of audio each clause has been given to the speaker
    # where each clause's words are: its first and last sound (s from its start); TTS pads clauses with silence
    voiced: list[tuple[float, float]] = field(default_factory=list)
    played: list[list[PlayedAudio]] = field(default_factory=list)  # per clause, what a live speaker played of it

    def heard_text(self, t_silent: float) -> str:
        """What the user heard when the speaker fell silent at ``t_silent``: whole clauses, then the words of the
        clause being played in proportion to the share of its audio that was played (the TTS gives no word
        timings; proportional over the clause's sound, its leading and trailing silence left out, is exact to about
        a word for evenly paced speech). With a live speaker the share is
        what the device really played (``t_silent`` comes from its stop(), so all it took was heard); else the times
        predicted at play()."""
        words: list[str] = []
        for i, (text, start, duration) in enumerate(zip(self.clauses, self.heard_at, self.audio_s)):
            played = self.played[i] if i < len(self.played) else []
            # a live speaker: what the device took of the clause (all of it heard by the time it fell silent)
            heard_s = (sum(p.played_samples / p.sample_rate for p in played) if played
                       else max(0.0, t_silent - start))
            if heard_s <= 0:
                break
            clause_words = text.split()
            if duration <= 0 or heard_s >= duration - 1e-6:
                words += clause_words
                continue
            lo, hi = self.voiced[i] if i < len(self.voiced) else (0.0, duration)
            if hi <= lo:  # no sound measured (silence): the whole clause
                lo, hi = 0.0, duration
            share = min(1.0, max(0.0, (heard_s - lo) / (hi - lo)))
            words += clause_words[:int(len(clause_words) * share)]
            break
        return " ".join(words)

    def heard_until(self) -> float | None:
        """When the last audio given to a live speaker has been heard; None while some is still to be played."""
        chunks = [p for clause in self.played for p in clause]
        if any(not p.done for p in chunks):
            return None
        return max((p.heard_until for p in chunks), default=0.0)


class Responder:
    def __init__(self, *, asr: SpeechRecognizer, llm: LanguageModel, chunker: Chunker, tts: SpeechSynthesizer,
                 sink: AudioSink, history: ChatHistory, clock: SessionClock, emit: Callable[[Event], None],
                 executor: Executor) -> None:
        self.asr, self.llm, self.chunker, self.tts = asr, llm, chunker, tts
        self.sink, self.history, self.clock, self.emit, self.executor = sink, history, clock, emit, executor

    def start(self, turn: UserTurn, release: bool = True) -> Reply:
        reply = Reply(turn, self.emit, lambda: self.sink.stop(self.clock.now()))
        if release:
            reply.release()
        reply.task = asyncio.create_task(self._answer(reply), name=f"reply-{turn.turn_id}")
        return reply

    async def _transcript(self, turn: UserTurn) -> Transcript:
        """The words of the turn: from the recognition the listener started during the pause when there is one,
        else recognised now."""
        if turn.transcript is not None:
            try:
                return await asyncio.shield(turn.transcript)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
            except Exception:  # noqa: BLE001 - the pause's recognition failed: recognise the turn afresh
                log.exception("turn %d: recognition during the pause failed", turn.turn_id)
        t_start = self.clock.now()
        text = await asyncio.get_running_loop().run_in_executor(self.executor, self.asr.transcribe, turn.audio)
        return Transcript(t=self.clock.now(), turn_id=turn.turn_id, text=text, t_start=t_start)

    async def _answer(self, reply: Reply) -> None:
        turn_id = reply.turn.turn_id
        cancel = reply.token
        progress = _Progress()
        speaking: asyncio.Task | None = None
        try:
            transcript = await self._transcript(reply.turn)
            progress.user_text = transcript.text
            reply.emit(transcript)
            if not progress.user_text:
                log.info("turn %d: nothing recognised, no reply", turn_id)
                reply.emit(ReplyEnded(t=self.clock.now(), turn_id=turn_id, agent_text="", llm_text="",
                                      error=NO_SPEECH))
                return
            messages = [*self.history.messages(), {"role": "user", "content": progress.user_text}]
            clauses: asyncio.Queue = asyncio.Queue()
            speaking = asyncio.create_task(self._speak(reply, clauses, progress, cancel))
            stream = ThreadStream(lambda: self.llm.stream(messages, cancel), cancel, self.executor, self.clock)
            async with aclosing(stream.items()) as pieces:
                async for t, piece in pieces:
                    progress.pieces.append(piece)
                    reply.emit(LlmToken(t=t, turn_id=turn_id, text=piece))
                    for text in self.chunker.push(piece):
                        self._clause(reply, clauses, progress, turn_id, text)
                    if speaking.done():
                        speaking.result()  # the TTS failed: stop the LLM too, rather than finish a reply nobody hears
            text = "".join(progress.pieces).strip()
            info = stream.result if isinstance(stream.result, StreamInfo) else StreamInfo(
                backend=self.llm.name, n_tokens=len(progress.pieces))
            reply.emit(LlmDone(t=self.clock.now(), turn_id=turn_id, text=text, info=info))
            for text in self.chunker.flush():
                self._clause(reply, clauses, progress, turn_id, text)
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
            t_silent = None
            if interrupted and reply.may_play.is_set():  # what the user has not heard is not said
                t_silent = reply.t_silent if reply.t_silent is not None else self.sink.stop(t_stop)
            # a failed reply is not stopped: what had reached the speaker plays out (whole clauses)
            heard = progress.heard_text(t_silent) if t_silent is not None else " ".join(
                text for text, t in zip(progress.clauses, progress.heard_at) if t < t_stop)
            if progress.user_text and reply.may_play.is_set() and not reply.continued:
                # the conversation keeps what the user heard, not what the LLM had already written
                self.history.add_user(progress.user_text)
                self.history.add_assistant(heard)
            reply.emit(ReplyEnded(t=t_stop, turn_id=turn_id, agent_text=heard,
                                  llm_text="".join(progress.pieces).strip(),
                                  error="interrupted" if interrupted else f"{type(exc).__name__}: {exc}",
                                  t_silent=t_silent))
            raise
        text = "".join(progress.pieces).strip()
        self.history.add_user(progress.user_text)
        self.history.add_assistant(text)
        reply.emit(ReplyEnded(t=self.clock.now(), turn_id=turn_id, agent_text=text, llm_text=text))

    def _clause(self, reply: Reply, clauses: asyncio.Queue, progress: _Progress, turn_id: int, text: str) -> None:
        clause = Clause(t=self.clock.now(), turn_id=turn_id, index=len(progress.clauses), text=text)
        progress.clauses.append(text)
        reply.emit(clause)
        clauses.put_nowait(clause)

    async def _speak(self, reply: Reply, clauses: asyncio.Queue, progress: _Progress, cancel: CancelToken) -> None:
        turn_id = reply.turn.turn_id
        while (clause := await clauses.get()) is not None:
            t_begin = self.clock.now()
            chunks = ThreadStream(lambda: self.tts.stream(clause.text, cancel), cancel, self.executor, self.clock)
            async with aclosing(chunks.items()) as audio:
                async for t, chunk in audio:
                    if cancel.cancelled:
                        break
                    t_ready = t
                    if not reply.may_play.is_set():  # a speculative reply computes, but is not heard until confirmed
                        await reply.may_play.wait()
                        if cancel.cancelled:
                            break
                        t_ready = self.clock.now()
                    if len(progress.heard_at) <= clause.index:
                        progress.heard_at.append(0.0)
                        progress.audio_s.append(0.0)
                        progress.played.append([])
                        progress.voiced.append((0.0, 0.0))
                    if isinstance(self.sink, ReportsPlayback):  # a real speaker: what it plays is measured
                        played = self.sink.play_chunk(chunk, self.tts.sample_rate)
                        progress.played[clause.index].append(played)
                        heard_at = played.heard_at
                    else:
                        heard_at = self.sink.play(chunk, self.tts.sample_rate, t_ready)
                    if progress.audio_s[clause.index] == 0.0:
                        progress.heard_at[clause.index] = heard_at
                    loud = np.flatnonzero(np.abs(chunk) > 0.01)
                    if loud.size:
                        at, (lo, hi) = progress.audio_s[clause.index], progress.voiced[clause.index]
                        first, last = at + loud[0] / self.tts.sample_rate, at + (loud[-1] + 1) / self.tts.sample_rate
                        progress.voiced[clause.index] = (first if hi <= lo else lo, last)
                    progress.audio_s[clause.index] += chunk.size / self.tts.sample_rate
                    reply.emit(AgentAudio(t=t, turn_id=turn_id, clause_index=clause.index, samples=chunk,
                                         sample_rate=self.tts.sample_rate, heard_at=heard_at))
            if isinstance(chunks.result, dict) and chunks.result:
                reply.emit(StageStats(t=self.clock.now(), turn_id=turn_id, stage="tts",
                                     values={k: float(v) for k, v in chunks.result.items()}))
            reply.emit(ClauseSpoken(t=self.clock.now(), turn_id=turn_id, index=clause.index,
                                   compute_s=self.clock.now() - t_begin))
        # A reply lasts until it has been heard: until then it can be cut (barge-in), and only then is it known
        # that the user heard all of it.
        heard_until = max((start + s for start, s in zip(progress.heard_at, progress.audio_s)), default=0.0)
        if any(progress.played):  # a real speaker: until it has played all of it (later than predicted after underruns)
            deadline = heard_until + 10.0  # a device that stopped taking audio must not hold the reply for ever
            while (measured := progress.heard_until()) is None and self.clock.now() < deadline:
                await asyncio.sleep(0.02)
            heard_until = measured if measured is not None else heard_until
        if heard_until > self.clock.now():
            await asyncio.sleep(heard_until - self.clock.now())
