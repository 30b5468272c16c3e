"""Pipeline behaviour on scripted stages (fern.testing): ordering, overlap, cancellation, failures, speculative
replies and turn decisions, through the real listener, responder, bus and observers — in seconds, not minutes."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from fern.chunker.clause import ClauseChunker
from fern.clock import SessionClock
from fern.events import (
    AgentAudio,
    BargeIn,
    Clause,
    LlmDone,
    LlmToken,
    ReplyEnded,
    SpeechStarted,
    Transcript,
    UserTurn,
)
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
from fern.turn.base import Verdict

RATE = 16000
# checkpoints count silence in frames of audio, endpoint delays run between arrival stamps: a delay may fall short of
# its checkpoint by the capture thread's scheduling jitter
JITTER_MS = 40
STORY = "Once upon a time, a cat lived in a tall house. It liked the sun. It slept all day long."


def make(parts, *, asr=None, llm=None, tts=None, turn=None, observers=(), block_ms=20, **options):
    log = EventLog()
    sink = TimelineSink(sample_rate=RATE)
    pipeline = VoicePipeline(
        source=ArraySource(tone_conversation(parts), block_ms=block_ms), sink=sink, vad=EnergyVad(),
        turn=turn or ScriptedTurnDetector(checkpoints_s=(0.2,)), asr=asr or ScriptedASR(["Hello there."]),
        llm=llm or ScriptedLLM(["Hi, how can I help you today?"]), chunker=ClauseChunker(first_min_words=2),
        tts=tts or ScriptedTTS(seconds_per_word=0.1), history=ChatHistory("You are FERN.", 1024),
        observers=[log, *observers], **options)
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
    assert 200 - JITTER_MS <= m["endpoint_delay_ms"] <= 300  # the detector's one checkpoint
    assert 0.55 <= record.user_audio_s <= 0.6 + 0.3 + 0.2 + 0.06  # speech + pre-roll + the post-roll there was
    assert record.agent_audio_s == pytest.approx(7 * 0.1, abs=0.01)  # 7 words at 0.1 s
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


def test_interrupt_stops_the_reply_at_the_word_that_was_heard_and_the_session_goes_on():
    class InterruptAfterPlaying:
        """Talks over the agent 0.6 s after its first sample is heard (0.25 s a word: two words heard)."""

        def __init__(self):
            self.armed, self.done, self.t = True, False, None

        def on_event(self, event):
            if isinstance(event, AgentAudio) and event.turn_id == 0 and self.armed:
                self.armed = False
                asyncio.get_running_loop().call_at(
                    asyncio.get_running_loop().time() + (event.heard_at - pipeline.clock.now()) + 0.6, self.fire)

        def fire(self):
            self.t = pipeline.clock.now()
            self.done = pipeline.interrupt()
            assert not pipeline.interrupt()  # a second interrupt while the first is handled is refused

        def close(self):
            pass

    llm = ScriptedLLM([STORY, "Paris."], token_s=0.05)
    stopper = InterruptAfterPlaying()
    pipeline, log, sink = make([("speech", 0.5), ("silence", 2.0), ("speech", 0.5), ("silence", 0.5)],
                               asr=ScriptedASR(["Tell me a story.", "Capital of France?"]), llm=llm,
                               tts=ScriptedTTS(seconds_per_word=0.25), observers=[stopper])
    first, second = pipeline.run_sync()
    assert stopper.done and first.error == "interrupted"
    assert llm.streamed[0] < len(STORY.split())  # the LLM stopped early
    ended = log.of(ReplyEnded, 0)[0]
    assert ended.t_silent == pytest.approx(stopper.t, abs=0.01)
    # history holds the words heard before the cut: 0.6 s at 0.25 s a word, give or take the stop's own delay
    heard = first.agent_text.split()
    assert 2 <= len(heard) <= 3 and first.clauses[0].startswith(first.agent_text), first.agent_text
    assert len(first.llm_text) > len(first.agent_text)
    agent = sink.track("agent")  # nothing after the cut stays on the speaker
    assert not np.any(agent[int((ended.t_silent + 0.001) * RATE):int(second.t_first_agent_sample * RATE) - 1])
    assert pipeline.history.messages()[1:3] == [{"role": "user", "content": "Tell me a story."},
                                               {"role": "assistant", "content": first.agent_text}]
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
    # 200 ms + 300 ms of judging, not the 1 s checkpoint
    assert 500 - JITTER_MS <= record.metrics()["endpoint_delay_ms"] < 950
    assert detector.asked[0].silence_s == pytest.approx(0.2, abs=0.05)
    assert detector.asked[0].audio.size < detector.asked[1].audio.size


def test_a_verdict_voided_while_it_waited_for_the_detector_is_never_computed():
    # 300 ms per verdict; checkpoints at 100 and 200 ms; the user goes on 250 ms into the first pause: the 200 ms
    # verdict, still waiting behind the 100 ms one, is void by the time the detector is free, and is skipped
    detector = ScriptedTurnDetector(checkpoints_s=(0.1, 0.2, 1.0), verdicts=lambda state: False, decide_s=0.3)
    pipeline, log, _ = make([("speech", 0.5), ("silence", 0.25), ("speech", 0.5), ("silence", 1.2)], turn=detector)
    record, = pipeline.run_sync()
    assert len(log.of(UserTurn)) == 1 and record.user_audio_s > 1.2
    first_pause = [s for s in detector.asked if s.audio.size < RATE]  # asked before the user went on
    assert [round(s.silence_s, 2) for s in first_pause] == [0.1]
    assert [round(s.silence_s, 2) for s in detector.asked[1:]] == [0.1, 0.2]  # the last pause: 1 s ends it anyway


def test_a_detector_that_says_wait_is_overruled_at_the_last_checkpoint():
    detector = ScriptedTurnDetector(checkpoints_s=(0.2, 0.5, 0.8), verdicts=lambda state: False)
    pipeline, _, _ = make([("speech", 0.5), ("silence", 1.0)], turn=detector)
    record, = pipeline.run_sync()
    assert len(detector.asked) == 2 and 800 - JITTER_MS <= record.metrics()["endpoint_delay_ms"] <= 900


def test_a_speculative_reply_works_unseen_until_released_and_leaves_no_trace_when_dropped():
    async def scenario():
        from concurrent.futures import ThreadPoolExecutor

        sink = TimelineSink(sample_rate=RATE)
        log = EventLog()
        history = ChatHistory("You are FERN.", 1024)
        llm, tts = ScriptedLLM(["Hi there, friend."]), ScriptedTTS()
        responder = Responder(asr=ScriptedASR(["Hello."]), llm=llm, chunker=ClauseChunker(first_min_words=2),
                              tts=tts, sink=sink, history=history, clock=SessionClock(), emit=log.on_event,
                              executor=ThreadPoolExecutor(4))
        turn = UserTurn(t=0.0, turn_id=0, audio=tone(0.5), sample_rate=RATE, t_speech_start=0.0, t_last_voiced=0.5)
        dropped = responder.start(turn, release=False)
        await asyncio.sleep(0.5)  # long enough for ASR, LLM and the first TTS chunk
        assert llm.calls and tts.spoken  # the work was done...
        assert log.events == [] and sink.track("agent").size == 0  # ...but nothing was seen or heard
        assert dropped.cancel()
        await asyncio.gather(dropped.task, return_exceptions=True)
        assert log.events == [] and history.messages() == [{"role": "system", "content": "You are FERN."}]
        kept = responder.start(UserTurn(t=1.0, turn_id=1, audio=tone(0.5), sample_rate=RATE, t_speech_start=0.5,
                                        t_last_voiced=1.0), release=False)
        await asyncio.sleep(0.3)
        assert log.events == []
        kept.release()  # the held events come out in order, with the times they happened
        await kept.task
        assert [type(e).__name__ for e in log.events[:3]] == ["Transcript", "LlmToken", "LlmToken"]
        assert log.of(Transcript)[0].t < 1.0 + 0.3 and log.of(AgentAudio, 1)
        assert log.of(ReplyEnded, 1)[0].agent_text == "Hi there, friend."
        assert history.messages()[-1] == {"role": "assistant", "content": "Hi there, friend."}

    asyncio.run(scenario())


def words_decide(state):
    """Likely over on audio alone; over once the words are in and end like a sentence."""
    if state.transcript is None:
        return Verdict(end=False, speculate=True)
    return Verdict(end=state.transcript.endswith("."), speculate=True)


def test_a_likely_end_starts_the_reply_early_and_the_confirmed_turn_keeps_it():
    def unsure_until_half_a_second(state):  # likely over at once, sure only after 0.5 s of silence
        return Verdict(end=state.silence_s >= 0.5, speculate=True)

    asr = ScriptedASR(["What time is it."], delay_s=0.1, logprob=-0.25)
    detector = ScriptedTurnDetector(checkpoints_s=(0.15, 0.5, 1.0), verdicts=unsure_until_half_a_second,
                                    needs_transcript=True)
    pipeline, log, sink = make([("speech", 0.6), ("silence", 1.2)], asr=asr, turn=detector)
    record, = pipeline.run_sync()
    assert pipeline.speculation == {"kept": 1, "dropped": 0}
    assert asr.calls == 1  # the pause's recognition is the turn's: ASR ran once
    assert record.user_text == "What time is it." and record.error is None
    assert detector.asked[0].transcript is None and detector.asked[-1].transcript == "What time is it."
    assert detector.asked[-1].transcript_logprob == -0.25  # the recogniser's confidence reaches the detector
    # the reply was prepared before the turn was confirmed, but nothing was heard before it
    assert record.t_llm_first_token < record.t_end <= record.t_first_agent_sample
    assert not np.any(sink.track("agent")[:int(record.t_end * RATE)])
    assert 500 - JITTER_MS <= record.metrics()["endpoint_delay_ms"] < 900


def test_the_pause_is_recognised_for_the_reply_even_when_the_detector_reads_no_words():
    asr = ScriptedASR(["What time is it."], delay_s=0.1)
    detector = ScriptedTurnDetector(checkpoints_s=(0.15, 0.5, 1.0), verdicts=lambda state: state.silence_s >= 0.5)
    pipeline, log, sink = make([("speech", 0.6), ("silence", 1.2)], asr=asr, turn=detector)
    record, = pipeline.run_sync()
    assert asr.calls == 1 and record.user_text == "What time is it."
    assert all(state.transcript is None for state in detector.asked)  # it was not handed the words...
    transcript, = log.of(Transcript)
    assert transcript.t_start < record.t_end  # ...but they were recognised from the first checkpoint on (overlap)


def test_the_detectors_own_reading_can_be_the_replys_words():
    heard = "What time is it."
    detector = ScriptedTurnDetector(checkpoints_s=(0.15, 0.5, 1.0),
                                    verdicts=lambda state: Verdict(end=state.silence_s >= 0.5, words=heard))
    asr = ScriptedASR(["(the reply's recogniser)"], delay_s=0.1)
    pipeline, log, _ = make([("speech", 0.6), ("silence", 1.2)], asr=asr, turn=detector, reply_words="detector")
    record, = pipeline.run_sync()
    assert asr.calls == 0 and record.user_text == heard and record.error is None
    transcript, = log.of(Transcript)
    assert transcript.t_start == pytest.approx(transcript.t, abs=1e-3) and transcript.t < record.t_end
    # the default: the reply's recogniser reads the pause, whatever the detector read
    pipeline, _, _ = make([("speech", 0.6), ("silence", 1.2)], asr=(asr := ScriptedASR(["Hello."])), turn=detector)
    record, = pipeline.run_sync()
    assert asr.calls == 1 and record.user_text == "Hello."


def test_an_unknown_source_of_the_replys_words_is_refused_by_name():
    from fern.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match="listener.reply_words='turn'"):
        make([("speech", 0.6)], reply_words="turn")


def test_words_still_being_recognised_when_the_turn_ends_belong_to_that_turn():
    asr = ScriptedASR(["What time is it.", "And the date?"], delay_s=0.4)
    detector = ScriptedTurnDetector(checkpoints_s=(0.1, 1.0), verdicts=lambda state: True)  # ends before the words
    pipeline, log, sink = make([("speech", 0.6), ("silence", 1.5), ("speech", 0.6), ("silence", 1.5)], asr=asr,
                               turn=detector)
    first, second = pipeline.run_sync()
    assert [first.user_text, second.user_text] == ["What time is it.", "And the date?"]
    assert first.t_asr_end > first.t_end  # the turn ended at 0.1 s of silence, the words came 0.4 s later


def test_the_models_hear_a_pause_the_user_spoke_after_shortened_and_the_recording_keeps_it():
    detector = ScriptedTurnDetector(checkpoints_s=(0.15, 1.5), verdicts=lambda state: False)
    pipeline, log, sink = make([("silence", 0.3), ("speech", 0.6), ("silence", 1.2), ("speech", 0.6), ("silence", 2.0)],
                               turn=detector)
    record, = pipeline.run_sync()
    assert pipeline.listener.inner_pause_s == 0.3
    in_pause, at_the_end = detector.asked
    assert in_pause.audio.size / RATE == pytest.approx(0.3 + 0.6 + 0.15, abs=0.07)  # pre-roll, speech, silence
    # the 1.2 s pause is heard as 0.3 s by the detector and by the ASR (the turn's audio)
    assert at_the_end.audio.size / RATE == pytest.approx(0.3 + 0.6 + 0.3 + 0.6 + 0.15, abs=0.07)
    turn, = log.of(UserTurn)
    assert turn.audio.size / RATE == pytest.approx(0.3 + 0.6 + 0.3 + 0.6 + 0.3, abs=0.07)  # + post-roll
    heard = np.abs(sink.track("user")) > 0.01  # the recording keeps the pause as it was
    assert heard[int(1.0 * RATE):int(2.0 * RATE)].sum() == 0 and heard[int(2.2 * RATE):int(2.6 * RATE)].mean() > 0.9
    assert record.user_text == "Hello there."


def test_going_on_before_the_reply_is_heard_continues_the_turn_and_loses_no_words():
    # the turn ends 0.1 s into a 0.4 s pause; the reply is slower than that, so the user goes on unheard
    asr = ScriptedASR(["Is it open?", "Is it open? And until when?"], delay_s=0.05)
    llm = ScriptedLLM(["Yes.", "Until nine."], ttft_s=0.6)
    detector = ScriptedTurnDetector(checkpoints_s=(0.1, 1.0), verdicts=lambda state: True)
    pipeline, log, sink = make([("silence", 0.3), ("speech", 0.6), ("silence", 0.4), ("speech", 0.6), ("silence", 1.5)],
                               asr=asr, llm=llm, turn=detector)
    first, second = pipeline.run_sync()
    assert first.error == "interrupted" and first.agent_text == "" and len(log.of(BargeIn)) == 1
    # the second turn carries the first's speech: it starts where the first did, and the reply answers the whole
    assert second.t_speech_start == first.t_speech_start and second.user_text == "Is it open? And until when?"
    whole, = [t for t in log.of(UserTurn) if t.turn_id == second.turn_id]
    # pre-roll, speech, the pause shortened to 0.3 s, speech, and the 0.1 s of silence at which the turn ended
    assert whole.audio.size / RATE == pytest.approx(0.3 + 0.6 + 0.3 + 0.6 + 0.1, abs=0.08)
    assert pipeline.history.messages()[1:] == [{"role": "user", "content": "Is it open? And until when?"},
                                              {"role": "assistant", "content": "Until nine."}]
    assert not np.any(sink.track("agent")[:int(second.t_end * RATE)])  # nothing was heard before the whole turn


def test_speech_that_resumes_drops_the_speculative_reply_and_the_turn_is_answered_whole():
    asr = ScriptedASR(["I would like to", "I would like to book a table."], delay_s=0.05)
    llm = ScriptedLLM(["To what?", "For how many people?"])
    detector = ScriptedTurnDetector(checkpoints_s=(0.15, 1.0), verdicts=words_decide, needs_transcript=True)
    pipeline, log, sink = make([("speech", 0.6), ("silence", 0.5), ("speech", 0.6), ("silence", 1.2)], asr=asr,
                               llm=llm, turn=detector)
    record, = pipeline.run_sync()
    assert pipeline.speculation == {"kept": 1, "dropped": 1}
    assert record.user_text == "I would like to book a table." and record.agent_text == "For how many people?"
    assert len(log.of(UserTurn)) == 1 and [e.agent_text for e in log.of(ReplyEnded)] == ["For how many people?"]
    assert len(llm.calls) == 2 and llm.calls[0][-1]["content"] == "I would like to"  # the dropped speculation...
    assert pipeline.history.messages()[1:] == [{"role": "user", "content": "I would like to book a table."},
                                              {"role": "assistant", "content": "For how many people?"}]
    heard = sink.track("agent")  # ...never reached the speaker: one reply's worth of audio, after the turn
    assert not np.any(heard[:int(record.t_end * RATE)])
    assert np.count_nonzero(heard) / RATE == pytest.approx(record.agent_audio_s, abs=0.05)


def test_talking_over_the_agent_stops_it_within_the_threshold_and_keeps_the_heard_words():
    # turn 0 asks for a story; 1.0 s into the (long) reply the user talks for 0.8 s: a barge-in, then turn 1
    pipeline, log, sink = make([("speech", 0.5), ("silence", 1.2), ("speech", 0.8), ("silence", 0.6)],
                               asr=ScriptedASR(["Tell me a story.", "Stop, what time is it?"]),
                               llm=ScriptedLLM([STORY, "Noon."]), tts=ScriptedTTS(seconds_per_word=0.25),
                               turn=ScriptedTurnDetector(checkpoints_s=(0.2,), min_speech_ms=200))
    first, second = pipeline.run_sync()
    barge, = log.of(BargeIn)
    assert barge.turn_id == 0 and first.error == "interrupted"
    m = first.metrics()
    # silent within min_speech_ms (200) + two 20 ms blocks of the user starting to talk (+ speech-start debounce)
    assert 200 <= m["barge_in_ms"] <= 200 + 40 + 40 + 20, m["barge_in_ms"]
    heard_s = first.t_silent - first.t_first_agent_sample
    assert m["words_heard"] == pytest.approx(heard_s / 0.25, abs=1.0)  # 0.25 s a word, cut at the word
    assert STORY.startswith(first.agent_text) and pipeline.history.messages()[2]["content"] == first.agent_text
    agent = sink.track("agent")
    assert not np.any(agent[int((first.t_silent + 0.001) * RATE):int(second.t_first_agent_sample * RATE) - 1])
    assert second.user_text == "Stop, what time is it?" and second.agent_text == "Noon."


def test_barge_in_waits_for_the_audio_of_its_threshold_when_blocks_come_in_bursts():
    """The microphone's blocks reach the listener late and in bursts (60 ms device periods here; a loaded machine
    does the same to 20 ms ones): the decision at speech start + min_speech_ms must count the speech captured until
    then, not only the frames that happen to have arrived (which once made the barge-in be missed altogether)."""
    pipeline, log, _ = make([("speech", 0.48), ("silence", 1.2), ("speech", 0.9), ("silence", 0.72)],
                            asr=ScriptedASR(["Tell me a story.", "Stop, what time is it?"]),
                            llm=ScriptedLLM([STORY, "Noon."]), tts=ScriptedTTS(seconds_per_word=0.25),
                            turn=ScriptedTurnDetector(checkpoints_s=(0.24,), min_speech_ms=200), block_ms=60)
    first, second = pipeline.run_sync()
    barge, = log.of(BargeIn)
    assert barge.turn_id == 0 and first.error == "interrupted"
    assert 200 <= first.metrics()["barge_in_ms"] <= 200 + 60 + 40, first.metrics()["barge_in_ms"]


def test_the_agent_hearing_its_own_words_neither_interrupts_nor_answers_them():
    """With the self-speech guard, echo the canceller missed (here: "speech" whose recognition is the agent's clause)
    is no barge-in, and no turn either: the agent does not answer itself once it stops talking."""
    own = "Once upon a time a cat lived in a tall house"
    pipeline, log, _ = make([("speech", 0.5), ("silence", 1.2), ("speech", 0.8), ("silence", 1.5)],
                            asr=ScriptedASR(["Tell me a story.", own]), llm=ScriptedLLM([STORY, "Why?"]),
                            tts=ScriptedTTS(seconds_per_word=0.25),
                            turn=ScriptedTurnDetector(checkpoints_s=(0.2,), min_speech_ms=200))
    pipeline.self_speech_guard = True
    record, = pipeline.run_sync()
    assert not log.of(BargeIn) and record.error is None and record.agent_text == STORY
    assert len(log.of(UserTurn)) == 1


def test_a_short_backchannel_does_not_interrupt():
    pipeline, log, _ = make([("speech", 0.5), ("silence", 0.8), ("speech", 0.12), ("silence", 1.5)],
                            asr=ScriptedASR(["Tell me a story."]), llm=ScriptedLLM([STORY]),
                            turn=ScriptedTurnDetector(checkpoints_s=(0.2,), min_speech_ms=200))
    record, = pipeline.run_sync()
    assert not log.of(BargeIn) and record.error is None and record.agent_text == STORY
    assert log.of(SpeechStarted)[1:]  # the "mm-hm" was heard as speech, just too short to interrupt


def test_barge_in_can_be_switched_off():
    pipeline, log, _ = make([("speech", 0.5), ("silence", 1.2), ("speech", 0.8), ("silence", 0.6)],
                            asr=ScriptedASR(["Tell me a story.", "Hello?"]), llm=ScriptedLLM([STORY, "Hi."]),
                            turn=ScriptedTurnDetector(checkpoints_s=(0.2,), min_speech_ms=200))
    pipeline.barge_in = False
    first, second = pipeline.run_sync()
    assert not log.of(BargeIn) and first.error is None and first.agent_text == STORY


def test_a_negative_inner_pause_is_refused_by_name():
    from fern.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match="inner_pause_ms"):
        VoicePipeline(source=ArraySource(np.zeros(320, np.float32)), sink=TimelineSink(sample_rate=RATE),
                      vad=EnergyVad(), turn=ScriptedTurnDetector(), asr=ScriptedASR(["x"]), llm=ScriptedLLM(["y"]),
                      chunker=ClauseChunker(), tts=ScriptedTTS(), history=ChatHistory("s", 64), inner_pause_ms=-1)
