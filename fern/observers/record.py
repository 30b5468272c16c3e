"""The turn record: built from the stages' events, one TurnRecord per reply, announced as TurnCompleted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fern.events import (
    AgentAudio,
    BargeIn,
    Clause,
    ClauseSpoken,
    Event,
    LlmDone,
    LlmToken,
    ReplyEnded,
    StageStats,
    Transcript,
    UserTurn,
)
from fern.metrics import TurnRecord


@dataclass(frozen=True)
class TurnCompleted:
    t: float
    record: TurnRecord


class TurnRecorder:
    def __init__(self, emit: Callable[[object], None] | None = None) -> None:
        self.emit = emit
        self.records: list[TurnRecord] = []  # completed turns, in order
        self._open: dict[int, TurnRecord] = {}

    def on_event(self, event: Event) -> None:
        if isinstance(event, UserTurn):
            self._open[event.turn_id] = TurnRecord(
                turn_id=event.turn_id, t_speech_start=event.t_speech_start, t_last_voiced=event.t_last_voiced,
                t_end=event.t, user_audio_s=event.audio.size / event.sample_rate)
            return
        rec = self._open.get(getattr(event, "turn_id", -1))
        if rec is None:
            return
        if isinstance(event, Transcript):
            rec.t_asr_start, rec.t_asr_end, rec.user_text = event.t_start, event.t, event.text
        elif isinstance(event, LlmToken):
            if rec.t_llm_first_token is None:
                rec.t_llm_first_token = event.t
            rec.n_tokens += 1
        elif isinstance(event, LlmDone):
            info = event.info
            rec.t_llm_done, rec.backend, rec.fallback = event.t, info.backend, info.fallback
            rec.n_tokens = info.n_tokens or rec.n_tokens
            rec.prompt_tokens, rec.reused_tokens = info.prompt_tokens, info.reused_tokens
        elif isinstance(event, Clause):
            if rec.t_first_clause is None:
                rec.t_first_clause = event.t
            rec.clauses.append(event.text)
        elif isinstance(event, AgentAudio):
            if rec.t_tts_first_audio is None:
                rec.t_tts_first_audio, rec.t_first_agent_sample = event.t, event.heard_at
            if len(rec.clause_heard_at) <= event.clause_index:
                rec.clause_heard_at.append(event.heard_at)
            duration = event.samples.size / event.sample_rate
            rec.agent_audio_s += duration
            rec.t_last_agent_sample = event.heard_at + duration
        elif isinstance(event, ClauseSpoken):
            rec.tts_compute_s += event.compute_s
            rec.t_tts_done = event.t
        elif isinstance(event, StageStats):
            rec.stage_stats.update({f"{event.stage}.{k}": v for k, v in event.values.items()})
        elif isinstance(event, BargeIn):
            rec.t_barge_in_speech = event.t_speech_start
        elif isinstance(event, ReplyEnded):
            rec.agent_text, rec.llm_text, rec.error = event.agent_text, event.llm_text, event.error
            rec.t_silent = event.t_silent
            del self._open[event.turn_id]
            self.records.append(rec)
            if self.emit is not None:
                self.emit(TurnCompleted(t=event.t, record=rec))

    def close(self) -> None:
        pass
