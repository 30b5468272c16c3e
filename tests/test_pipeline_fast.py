"""Pipeline behaviour on scripted stages (fern.testing): ordering, overlap, cancellation, failures, speculative
replies and turn decisions, through the real listener, responder, bus and observers — in seconds, not minutes."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from fern.chunker.clause import ClauseChunker
from fern.clock import SessionClock
from fern.events import AgentAudio, Clause, LlmDone, LlmToken, ReplyEnded, SpeechStarted, Transcript, UserTurn
from fern.io.file import TimelineSink
from fern.llm.history import ChatHistory
from fern.observers.record import TurnCompleted
from fern.pipeline import VoicePipeline
from fern.responder import Responder
from fern.testing import (
    ArraySource,
    EnergyVad,
    EventLog,
    ScriptedASR,
    ScriptedLLM,
    ScriptedTTS,
    ScriptedTurnDetector,
    tone,
    tone_conversation,
)

RATE = 16000
STORY = "Once upon a time, a cat lived in a tall house. It liked the sun. It slept all day long."


def make(parts, *, asr=None, llm=None, tts=None, turn=None, observers=()):
    log = EventLog()
    sink = TimelineSink(sample_rate=RATE)
    pipeline = VoicePipeline(
        source=ArraySource(tone_conversation(parts)), sink=sink, vad=EnergyVad(),
        turn=turn or ScriptedTurnDetector(checkpoints_s=(0.2,)), asr=asr or ScriptedASR(["Hello there."]),
        llm=llm or ScriptedLLM(["Hi, how can I help you today?"]), chunker=ClauseChunker(first_min_words=2),
        tts=tts or ScriptedTTS(), history=ChatHistory("You are FERN.", 1024), observers=[log, *observers])
    return pipeline, log, sink


def test_a_turn_flows_through_every_stage_in_order_and_is_recorded():
    pipeline, log, sink = make([("silence", 0.3), ("speech", 0.6), ("silence", 0.6)])
    record, = pipeline.run_sync()
    first = {kind.__name__: log.events.index(log.of(kind, 0)[0])
             for kind in (UserTurn, Transcript, LlmToken, Clause, AgentAudio, LlmDone, ReplyEnded)}
    assert first["UserTurn"] < first["Transcript"] < first["LlmToken"] < first["Clause"] < first["AgentAudio"]
    assert first["LlmDone"] < first["ReplyEnded"] and log.of(ReplyEnded, 0)[0] is log.of(ReplyEnded)[-1]
    assert isinstance(log.events[0], SpeechStarted) and isinstance(log.events[-1], TurnCompleted)
    assert log.closed  # observers are closed when the session ends
    m = record.metrics()
    assert record.error is None and record.agent_text == "Hi, how can I help you today?"
    assert m["endpoint_delay_ms"] == pytest.approx(200, abs=25)  # the detector's one checkpoint, plus a frame
    assert 0.55 <= record.user_audio_s <= 0.6 + 0.3 + 0.2 + 0.02  # speech + pre-roll + the post-roll there was
    assert record.agent_audio_s == pytest.approx(7 * 0.25, abs=0.01)  # 7 words at 0.25 s
    # voice-to-voice is made of its parts; what is left is the orchestration's own cost
    assert not math.isnan(m["overhead_ms"]) and m["overhead_ms"] >= 0
    assert m["voice_to_voice_ms"] >= m["endpoint_delay_ms"] + m["asr_ms"] + m["first_clause_ms"]
    assert pipeline.history.messages()[1:] == [{"role": "user", "content": "Hello there."},
                                              {"role": "assistant", "content": record.agent_text}]
    # the agent is heard where the record says it starts
    agent = sink.track("agent")
    start = int(record.t_first_agent_sample * RATE)
    assert np.abs(agent[start:start + 800]).max() > 0.1 and np.abs(agent[:start - 1]).max() == 0


def test_tts_speaks_the_first_clause_while_the_llm_is_still_writing():
    pipeline, log, _ = make([("speech", 0.5), ("silence", 0.5)], llm=ScriptedLLM([STORY], token_s=0.08))
    record, = pipeline.run_sync()
    assert record.metrics()["stages_overlapped"] == 1.0
    assert log.of(AgentAudio)[0].t < log.of(LlmDone)[0].t
    assert len(record.clauses) >= 3 and record.agent_text == STORY


def test_interrupt_stops_the_reply_at_what_was_heard_and_the_session_goes_on():
    class InterruptOnFirstAudio:
        def __init__(self):
            self.done = False

        def on_event(self, event):
            if isinstance(event, AgentAudio) and event.turn_id == 0 and not self.done:
                self.done = pipeline.interrupt()
                assert not pipeline.interrupt()  # a second interrupt while the first is handled is refused

        def close(self):
            pass

    llm = ScriptedLLM([STORY, "Paris."], token_s=0.05)
    stopper = InterruptOnFirstAudio()
    pipeline, log, sink = make([("speech", 0.5), ("silence", 1.0), ("speech", 0.5), ("silence", 0.5)],
                               asr=ScriptedASR(["Tell me a story.", "Capital of France?"]), llm=llm,
                               observers=[stopper])
    first, second = pipeline.run_sync()
    assert stopper.done and first.error == "interrupted"
    assert llm.streamed[0] < len(STORY.split())  # the LLM stopped early
    assert first.agent_text == first.clauses[0] and len(first.llm_text) > len(first.agent_text)
    # nothing after the interruption stays on the speaker: the first clause's audio is cut to what was played
    agent = sink.track("agent")
    cut = log.of(ReplyEnded, 0)[0].t
    assert not np.any(agent[int((cut + 0.03) * RATE):int(second.t_first_agent_sample * RATE) - 1])
    assert pipeline.history.messages()[1:3] == [{"role": "user", "content": "Tell me a story."},
                                               {"role": "assistant", "content": first.clauses[0]}]
    assert second.error is None and second.agent_text == "Paris."


def test_a_failing_llm_turn_is_recorded_and_the_next_turn_is_answered():
    llm = ScriptedLLM([STORY, "Paris."], fail_at=(0, 3))
    pipeline, _, _ = make([("speech", 0.5), ("silence", 0.6), ("speech", 0.5), ("silence", 0.5)], llm=llm)
    first, second = pipeline.run_sync()
    assert first.error == "RuntimeError: scripted failed (scripted)"
    assert second.error is None and second.agent_text == "Paris."


def test_a_failing_synthesizer_stops_the_llm_too():
    llm = ScriptedLLM([STORY], token_s=0.1)
    pipeline, _, _ = make([("speech", 0.5), ("silence", 0.5)], llm=llm, tts=ScriptedTTS(fail_on="Once"))
    record, = pipeline.run_sync()
    assert record.error == "RuntimeError: synthesizer failed (scripted)"
    assert llm.streamed[0] < len(STORY.split())  # the LLM did not write a reply nobody would hear


def test_a_broken_observer_is_logged_and_skipped(caplog):
    class Broken:
        def on_event(self, event):
            raise ValueError("observer bug")

        def close(self):
            pass

    pipeline, log, _ = make([("speech", 0.5), ("silence", 0.5)], observers=[Broken()])
    record, = pipeline.run_sync()
    assert record.error is None and log.of(TurnCompleted) and "observer bug" in caplog.text


def test_short_pauses_and_clicks_are_not_turns():
    pipeline, log, _ = make([("speech", 0.5), ("silence", 0.1), ("speech", 0.5), ("silence", 0.5),
                             ("speech", 0.06), ("silence", 0.5)])
    record, = pipeline.run_sync()
    assert record.user_audio_s > 1.0  # one turn across the 100 ms pause; the 60 ms click after it is dropped
    assert len(log.of(UserTurn)) == 1


def test_speech_that_resumes_voids_a_verdict_still_being_computed():
    # The detector says "end" after 300 ms of thinking, but the user goes on speaking 250 ms into the pause.
    detector = ScriptedTurnDetector(checkpoints_s=(0.2, 1.0), verdicts=lambda state: True, decide_s=0.3)
    pipeline, log, _ = make([("speech", 0.5), ("silence", 0.25), ("speech", 0.5), ("silence", 1.2)], turn=detector)
    record, = pipeline.run_sync()
    assert len(detector.asked) == 2  # both pauses were judged...
    assert record.user_audio_s > 1.2  # ...but the first verdict came too late to cut the turn
    assert record.metrics()["endpoint_delay_ms"] == pytest.approx(500, abs=60)  # 200 ms + 300 ms of judging
    assert detector.asked[0].silence_s == pytest.approx(0.2, abs=0.021)
    assert detector.asked[0].audio.size < detector.asked[1].audio.size


def test_a_detector_that_says_wait_is_overruled_at_the_last_checkpoint():
    detector = ScriptedTurnDetector(checkpoints_s=(0.2, 0.5, 0.8), verdicts=lambda state: False)
    pipeline, _, _ = make([("speech", 0.5), ("silence", 1.0)], turn=detector)
    record, = pipeline.run_sync()
    assert len(detector.asked) == 2 and record.metrics()["endpoint_delay_ms"] == pytest.approx(800, abs=25)


def test_a_speculative_reply_is_silent_until_released_and_leaves_no_trace_when_dropped():
    async def scenario():
        sink = TimelineSink(sample_rate=RATE)
        log = EventLog()
        history = ChatHistory("You are FERN.", 1024)
        from concurrent.futures import ThreadPoolExecutor

        responder = Responder(asr=ScriptedASR(["Hello."]), llm=ScriptedLLM(["Hi there, friend."]),
                              chunker=ClauseChunker(first_min_words=2), tts=ScriptedTTS(), sink=sink,
                              history=history, clock=SessionClock(), emit=log.on_event,
                              executor=ThreadPoolExecutor(4))
        turn = UserTurn(t=0.0, turn_id=0, audio=tone(0.5), sample_rate=RATE, t_speech_start=0.0, t_last_voiced=0.5)
        dropped = responder.start(turn, release=False)
        await asyncio.sleep(0.5)  # long enough for ASR, LLM and the first TTS chunk
        assert log.of(Clause) and not log.of(AgentAudio) and sink.track("agent").size == 0
        assert dropped.cancel()
        await asyncio.gather(dropped.task, return_exceptions=True)
        assert history.messages() == [{"role": "system", "content": "You are FERN."}]
        kept = responder.start(UserTurn(t=1.0, turn_id=1, audio=tone(0.5), sample_rate=RATE, t_speech_start=0.5,
                                        t_last_voiced=1.0), release=False)
        await asyncio.sleep(0.3)
        assert not log.of(AgentAudio, 1)
        kept.release()
        await kept.task
        assert log.of(AgentAudio, 1) and log.of(ReplyEnded, 1)[0].agent_text == "Hi there, friend."
        assert history.messages()[-1] == {"role": "assistant", "content": "Hi there, friend."}

    asyncio.run(scenario())
