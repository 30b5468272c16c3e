"""The per-turn record and the one registry of metric names.

Everything that names a metric — the turn record, turns.csv, the console table, MLflow and tracking/compare.py —
reads METRICS, so a metric is defined (name, unit, meaning, how to compute it, whether a run summarises it) once.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

NAN = float("nan")


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
    prompt_tokens: int | None = None
    reused_tokens: int | None = None
    llm_text: str = ""  # everything the LLM wrote; differs from agent_text when a reply was interrupted
    t_last_agent_sample: float | None = None  # when the speaker finishes this reply
    t_barge_in_speech: float | None = None  # the user started talking over this reply (and it was cut)
    t_silent: float | None = None  # an interrupted reply: when the speaker fell silent
    clauses: list[str] = field(default_factory=list)
    clause_heard_at: list[float] = field(default_factory=list)  # when each clause starts on the speaker
    stage_stats: dict[str, float] = field(default_factory=dict)  # e.g. tts.first_chunk_s, from the stages
    quality: dict[str, Any] = field(default_factory=dict)  # filled after the session (e.g. round-trip WER)

    def metrics(self) -> dict[str, float]:
        return {m.name: m.of(self) for m in METRICS}

    def to_dict(self) -> dict[str, Any]:
        return {"turn_id": self.turn_id, "user_text": self.user_text, "agent_text": self.agent_text,
                "llm_text": self.llm_text, "backend": self.backend, "error": self.error,
                "clauses": list(self.clauses), "round_trip_text": self.quality.get("round_trip_text"),
                "metrics": self.metrics(), "times": {k: v for k, v in asdict(self).items() if k.startswith("t_")}}


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    description: str
    compute: Callable[[TurnRecord], float | None]
    summary: bool = False  # a run reports its median as ``median_<name>``
    table: bool = False  # a column of the console table printed after a run

    def of(self, rec: TurnRecord) -> float:
        try:
            value = self.compute(rec)
        except (TypeError, ZeroDivisionError):  # a time that never happened, or nothing to divide by
            return NAN
        return NAN if value is None else float(value)


def _ms(a: float | None, b: float | None) -> float:
    return NAN if a is None or b is None else round(1000.0 * (b - a), 1)


def _overhead_ms(r: TurnRecord) -> float:
    """Voice-to-voice minus the stage times it is made of and the wait for a busy speaker: what the orchestration
    itself costs (hand-offs between stages)."""
    parts = (_ms(r.t_last_voiced, r.t_end), _ms(r.t_asr_start, r.t_asr_end), _ms(r.t_asr_end, r.t_first_clause),
             _ms(r.t_first_clause, r.t_tts_first_audio), _ms(r.t_tts_first_audio, r.t_first_agent_sample))
    return round(_ms(r.t_last_voiced, r.t_first_agent_sample) - sum(parts), 1)


METRICS: tuple[Metric, ...] = (
    Metric("endpoint_delay_ms", "ms", "last voiced user frame -> end of turn declared",
           lambda r: _ms(r.t_last_voiced, r.t_end), summary=True, table=True),
    Metric("asr_ms", "ms", "speech recognition of the whole turn", lambda r: _ms(r.t_asr_start, r.t_asr_end),
           summary=True, table=True),
    Metric("llm_ttft_ms", "ms", "transcript -> first LLM token", lambda r: _ms(r.t_asr_end, r.t_llm_first_token),
           summary=True, table=True),
    Metric("first_clause_ms", "ms", "transcript -> first speakable clause",
           lambda r: _ms(r.t_asr_end, r.t_first_clause), summary=True, table=True),
    Metric("tts_first_audio_ms", "ms", "first clause -> its first audio",
           lambda r: _ms(r.t_first_clause, r.t_tts_first_audio), summary=True, table=True),
    Metric("voice_to_voice_ms", "ms", "last voiced user frame -> first agent sample on the speaker",
           lambda r: _ms(r.t_last_voiced, r.t_first_agent_sample), summary=True, table=True),
    Metric("speaker_wait_ms", "ms", "first agent audio ready -> heard (a speaker still busy, device output latency)",
           lambda r: _ms(r.t_tts_first_audio, r.t_first_agent_sample)),
    Metric("overhead_ms", "ms", "voice-to-voice minus endpoint, ASR, first clause, TTS first audio and speaker wait",
           _overhead_ms, summary=True),
    Metric("llm_total_ms", "ms", "transcript -> LLM done", lambda r: _ms(r.t_asr_end, r.t_llm_done)),
    Metric("asr_rtf", "x", "ASR time / user audio duration",
           lambda r: round(_ms(r.t_asr_start, r.t_asr_end) / 1000.0 / r.user_audio_s, 4) if r.user_audio_s else NAN,
           summary=True),
    Metric("tts_rtf", "x", "TTS compute time / agent audio duration",
           lambda r: round(r.tts_compute_s / r.agent_audio_s, 4) if r.agent_audio_s else NAN, summary=True),
    Metric("llm_tokens", "tokens", "tokens (Gemini: streamed pieces) in the reply", lambda r: r.n_tokens),
    Metric("llm_ms_per_token", "ms", "decode time per token after the first",
           lambda r: round(_ms(r.t_llm_first_token, r.t_llm_done) / (r.n_tokens - 1), 2) if r.n_tokens > 1 else NAN,
           summary=True),
    Metric("llm_prompt_tokens", "tokens", "prompt length (system + history + turn)", lambda r: r.prompt_tokens),
    Metric("llm_reused_tokens", "tokens", "prompt tokens whose KV cache was reused", lambda r: r.reused_tokens),
    Metric("tts_first_chunk_ms", "ms", "the synthesizer's own time to its first chunk (CSM)",
           lambda r: round(1000 * r.stage_stats["tts.first_chunk_s"], 1) if "tts.first_chunk_s" in r.stage_stats
           else NAN),
    Metric("user_audio_s", "s", "duration of the user's turn", lambda r: round(r.user_audio_s, 3)),
    Metric("agent_audio_s", "s", "duration of the agent's reply as played", lambda r: round(r.agent_audio_s, 3)),
    Metric("stages_overlapped", "bool", "1 when agent audio existed before the LLM finished",
           lambda r: float(r.t_tts_first_audio is not None and r.t_llm_done is not None
                           and r.t_tts_first_audio < r.t_llm_done)),
    Metric("llm_fallback", "bool", "1 when the reply came from a fallback LLM or the apology",
           lambda r: float(r.fallback)),
    Metric("barge_in_ms", "ms", "user starts talking over the agent -> the agent is silent",
           lambda r: _ms(r.t_barge_in_speech, r.t_silent)),
    Metric("words_heard", "words", "an interrupted reply: words the user heard (what history keeps)",
           lambda r: len(r.agent_text.split()) if r.error == "interrupted" else NAN),
    Metric("round_trip_wer", "ratio", "the agent's audio transcribed back vs. its text (after the session)",
           lambda r: r.quality.get("round_trip_wer"), summary=True),
)
BY_NAME = {m.name: m for m in METRICS}
SUMMARY_METRICS = tuple(m.name for m in METRICS if m.summary)
TABLE_METRICS = tuple(m.name for m in METRICS if m.table)
# What tracking/compare.py shows by default: the medians, then the run-level figures.
RUN_METRICS = (*(f"median_{name}" for name in SUMMARY_METRICS), "turn_errors", "startup_s", "speculated_kept",
               "speculated_dropped")


def summarise(records: Iterable[TurnRecord]) -> dict[str, float]:
    records = list(records)
    failed = [r for r in records if r.error and r.error != "no speech recognised"]
    summary: dict[str, float] = {"turns": float(len(records)), "turn_errors": float(len(failed))}
    per_turn = [r.metrics() for r in records]
    for name in SUMMARY_METRICS:
        values = [v for m in per_turn if not math.isnan(v := m[name])]
        if values:
            summary[f"median_{name}"] = float(statistics.median(values))
    return summary


def format_table(records: Iterable[TurnRecord]) -> str:
    lines = ["turn | " + " | ".join(TABLE_METRICS) + " | user -> agent"]
    for r in records:
        m = r.metrics()
        lines.append(f"{r.turn_id:>4} | " + " | ".join(f"{m[c]:>{len(c)}.0f}" for c in TABLE_METRICS)
                     + f" | {r.user_text!r} -> {r.agent_text!r}")
    return "\n".join(lines)
