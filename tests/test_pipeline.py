"""The pipeline with real stages, driven in-process: cancellation of a reply mid-stream, and the CSM synthesizer
(tiny random weights) streaming inside the cascade."""

from __future__ import annotations

import numpy as np
import pytest

from fern.chunker.clause import ClauseChunker
from fern.io.file import TimelineSink, WavFileSource
from fern.llm.history import ChatHistory
from fern.pipeline import VoicePipeline
from fern.tts.espeak import EspeakSynthesizer, speak_conversation
from fern.turn.silence import SilenceTurnDetector
from fern.vad.webrtc import WebRtcVad

pytestmark = pytest.mark.models  # real models: the full tier (pytest -m 'not models' skips them)


class BargeInSink(TimelineSink):
    """A speaker whose listener talks over the agent as soon as reply number ``interrupt_turn`` starts playing."""

    def __init__(self, interrupt_turn: int) -> None:
        super().__init__(sample_rate=24000)
        self.pipeline: VoicePipeline | None = None
        self.interrupt_turn = interrupt_turn
        self.interrupted_at: float | None = None

    def play(self, samples, sample_rate, t):
        heard_at = super().play(samples, sample_rate, t)
        replying_to = len(self.pipeline.records) if self.pipeline else -1  # finished replies so far
        if self.interrupted_at is None and replying_to == self.interrupt_turn and self.pipeline.interrupt():
            self.interrupted_at = t
            assert not self.pipeline.interrupt()  # a second interrupt while the first is handled is refused
        return heard_at


class FailsOnce:
    """Fault injection around the real LLM: its first reply dies mid-stream, as a GPU out-of-memory would."""

    def __init__(self, llm) -> None:
        self.llm, self.name, self.failed = llm, llm.name, False
        self.count_tokens = llm.count_tokens

    def stream(self, messages, cancel):
        for i, piece in enumerate(self.llm.stream(messages, cancel)):
            if not self.failed and i == 3:
                self.failed = True
                raise RuntimeError("CUDA out of memory (injected)")
            yield piece


def make_pipeline(tmp_path, write_wav, questions, asr, llm, tts, sink, gap_s=6.0):
    wav = write_wav("conversation.wav", speak_conversation(questions, gap_s=gap_s), 16000)
    return VoicePipeline(
        source=WavFileSource(str(wav), trailing_silence_s=1.0), sink=sink, vad=WebRtcVad(), turn=SilenceTurnDetector(),
        asr=asr, llm=llm, chunker=ClauseChunker(), tts=tts,
        history=ChatHistory("You are FERN, a helpful voice assistant. Keep answers short.", 1024, llm.count_tokens))


def test_interrupting_a_reply_stops_llm_and_tts_and_the_session_goes_on(tmp_path, write_wav, tiny_en, smollm2):
    sink = BargeInSink(interrupt_turn=0)
    pipeline = make_pipeline(tmp_path, write_wav, ["Can you tell me a short story about a cat?",
                                                   "What is the capital of France?"],
                             tiny_en, smollm2, EspeakSynthesizer(), sink)
    sink.pipeline = pipeline
    first, second = pipeline.run_sync()
    assert sink.interrupted_at is not None
    assert first.error == "interrupted"
    # the story would run to max_new_tokens (40); it stopped right after the first clause started to play
    assert first.n_tokens < 30 and first.t_llm_done is None
    assert first.agent_text == first.clauses[0] and len(first.llm_text) > len(first.agent_text)
    # nothing the user did not hear stays on the speaker
    agent = sink.track("agent")
    stop = int((first.t_first_agent_sample + 1.0) * 24000)
    assert not np.any(agent[stop:int(second.t_first_agent_sample * 24000) - 1])
    assert pipeline.history.messages()[2] == {"role": "assistant", "content": first.clauses[0]}
    # the next turn is answered normally, by the same (now idle) LLM and TTS
    assert second.error is None and second.n_tokens > 0 and second.agent_audio_s > 0.5
    assert "france" in pipeline.history.messages()[3]["content"].lower()


def test_a_failing_turn_is_recorded_and_the_session_goes_on(tmp_path, write_wav, tiny_en, smollm2):
    llm = FailsOnce(smollm2)
    pipeline = make_pipeline(tmp_path, write_wav, ["Can you tell me a short story about a cat?",
                                                   "What is the capital of France?"],
                             tiny_en, llm, EspeakSynthesizer(), TimelineSink())
    first, second = pipeline.run_sync()
    assert first.error == "RuntimeError: CUDA out of memory (injected)"
    assert second.error is None and second.agent_text and second.agent_audio_s > 0.5


def test_espeak_speaks_text_that_looks_like_an_option():
    audio = EspeakSynthesizer().synthesize("- apples and pears")
    assert audio.size > 0.5 * 22050


def test_csm_synthesizer_streams_inside_the_pipeline(tmp_path, write_wav, tiny_en, smollm2):
    pytest.importorskip("moshi")
    from fern.tts.csm.synthesizer import CsmSynthesizer
    from fern.tts.csm.tiny import make_tiny_csm, make_tiny_mimi
    from fern.tts.csm.tokenizer import ByteTokenizer

    tts = CsmSynthesizer(_modules=(make_tiny_csm(), ByteTokenizer(), make_tiny_mimi()), device="cpu", temperature=0.0,
                         warmup=False, max_audio_s=0.8, first_chunk_frames=1, chunk_frames=2)
    sink = TimelineSink(sample_rate=24000)
    pipeline = make_pipeline(tmp_path, write_wav, ["What is the capital of France?"], tiny_en, smollm2, tts, sink,
                             gap_s=2.0)
    record, = pipeline.run_sync()
    assert record.error is None and record.agent_text
    # every clause was spoken: at least one 80 ms frame each, at most max_audio_s each
    assert 0.08 * len(record.clauses) <= record.agent_audio_s <= 0.8 * len(record.clauses) + 1e-6
    agent = sink.track("agent")
    start = int(record.t_first_agent_sample * 24000)
    assert np.abs(agent[start:start + 1920]).max() > 0  # audio where the record says it started
