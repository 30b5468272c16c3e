"""The pipeline with real stages, driven in-process: cancellation of a reply mid-stream, and the CSM synthesizer
(tiny random weights) streaming inside the cascade."""

from __future__ import annotations

import numpy as np
import pytest

from fern.chunker.clause import ClauseChunker
from fern.events import BargeIn
from fern.io.file import TimelineSink, WavFileSource
from fern.llm.history import ChatHistory
from fern.pipeline import VoicePipeline
from fern.testing import EventLog
from fern.tts.espeak import EspeakSynthesizer, speak_conversation
from fern.turn.silence import SilenceTurnDetector
from fern.vad.webrtc import WebRtcVad

pytestmark = pytest.mark.models  # real models: the full tier (pytest -m 'not models' skips them)


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


def make_pipeline(tmp_path, write_wav, questions, asr, llm, tts, sink, gap_s=6.0, observers=()):
    wav = write_wav("conversation.wav", speak_conversation(questions, gap_s=gap_s), 16000)
    return VoicePipeline(
        source=WavFileSource(str(wav), trailing_silence_s=1.0), sink=sink, vad=WebRtcVad(), turn=SilenceTurnDetector(),
        asr=asr, llm=llm, chunker=ClauseChunker(), tts=tts,
        history=ChatHistory("You are FERN, a helpful voice assistant. Keep answers short.", 1024, llm.count_tokens),
        observers=observers)


def test_talking_over_a_long_reply_cuts_it_at_the_heard_words_and_the_next_turn_is_answered(
        tmp_path, write_wav, tiny_en, smollm2):
    """Real barge-in: the user asks for a story, then asks another question while the story is being told."""
    sink = TimelineSink(sample_rate=24000)
    log = EventLog()
    pipeline = make_pipeline(tmp_path, write_wav, ["Can you tell me a short story about a cat?",
                                                   "What is the capital of France?"],
                             tiny_en, smollm2, EspeakSynthesizer(), sink, gap_s=4.5, observers=[log])
    first, second = pipeline.run_sync()
    barge, = log.of(BargeIn)
    assert barge.turn_id == 0 and first.error == "interrupted"
    # the reply (~5 s of speech; the question comes ~3 s into it) was cut: history keeps the words heard before the
    # speaker fell silent
    assert first.n_tokens < 48 or len(first.agent_text) < len(first.llm_text)
    heard_s = first.t_silent - first.t_first_agent_sample
    assert heard_s > 1.0, "the question should come while the story is being told"
    heard = first.agent_text.split()
    assert 0 < len(heard) < len(first.llm_text.split()) and first.llm_text.startswith(first.agent_text)
    # espeak at 175 words/min says < 3 words a second: nothing unheard is kept (the clause being played when the
    # speaker fell silent is counted in proportion to its sound, "exact to about a word": one word of slack)
    assert len(heard) <= heard_s * 4 + 1
    assert first.metrics()["barge_in_ms"] <= 200 + 60 + 60  # min_speech_ms + block jitter + debounce
    agent = sink.track("agent")
    assert not np.any(agent[int((first.t_silent + 0.001) * 24000):int(second.t_first_agent_sample * 24000) - 1])
    assert pipeline.history.messages()[2] == {"role": "assistant", "content": first.agent_text}
    # the question asked over the story is answered normally, by the same (now idle) LLM and TTS
    assert second.error is None and "france" in second.user_text.lower() and second.agent_audio_s > 0.5


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
